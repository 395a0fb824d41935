//! Each contract states its version, and the crate's table agrees.

#[test]
fn every_contract_states_the_version_the_crate_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    for (file, version) in api::CONTRACT_VERSIONS {
        let text =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let first = text.lines().next().unwrap_or_default();
        let package = api::descriptor_set()
            .file
            .iter()
            .find(|f| f.name() == *file)
            .map(|f| f.package().to_owned())
            .unwrap_or_else(|| panic!("{file} not compiled"));
        assert_eq!(
            first,
            format!("// contract-version: {package} {version}"),
            "{file}"
        );
    }
}

#[test]
fn every_compiled_contract_is_versioned() {
    let versioned: Vec<&str> = api::CONTRACT_VERSIONS.iter().map(|(f, _)| *f).collect();
    for file in api::descriptor_set().file {
        let name = file.name();
        if name.starts_with("google/") {
            continue;
        }
        assert!(
            versioned.contains(&name),
            "{name} has no entry in CONTRACT_VERSIONS"
        );
    }
}
