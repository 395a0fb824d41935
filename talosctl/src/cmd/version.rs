//! `talosctl version`.
//!
//! Text output, as upstream (`<TAB>` is a tab character):
//!
//! ```text
//! Client:
//! <TAB>Tag:         v0.1.0
//! <TAB>SHA:         undefined
//! <TAB>Built:
//! <TAB>Go version:  rust
//! <TAB>OS/Arch:     linux/amd64
//! Server:
//! <TAB>NODE:        10.5.0.2
//! <TAB>Tag:         v0.1.0
//! <TAB>...
//! <TAB>Enabled:     RBAC
//! ```

use serde::Serialize;

use crate::cli::{GlobalArgs, OutputFormat, VersionArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output;

/// Upstream's product name in `--short`.
const NAME: &str = "Talos";

/// This client's version as the API's `VersionInfo`.
#[must_use]
pub fn client_version() -> api::machine::VersionInfo {
    api::machine::VersionInfo {
        tag: format!("v{}", env!("CARGO_PKG_VERSION")),
        sha: option_env!("BUILD_SHA").unwrap_or("undefined").to_owned(),
        built: String::new(),
        go_version: "rust".to_owned(),
        os: std::env::consts::OS.to_owned(),
        arch: go_arch(std::env::consts::ARCH).to_owned(),
    }
}

fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Upstream's long version block (each line tab-indented).
#[must_use]
pub fn long_version(info: &api::machine::VersionInfo) -> String {
    format!(
        "\tTag:         {}\n\tSHA:         {}\n\tBuilt:       {}\n\tGo version:  {}\n\tOS/Arch:     {}/{}\n",
        info.tag, info.sha, info.built, info.go_version, info.os, info.arch
    )
}

/// One server block: `NODE:`, the long version, `Enabled:`.
#[must_use]
pub fn server_block(node: &str, reply: &api::machine::Version) -> String {
    let info = reply.version.clone().unwrap_or_default();
    let mut features = Vec::new();
    if reply.features.is_some_and(|features| features.rbac) {
        features.push("RBAC");
    }
    format!(
        "\tNODE:        {node}\n{}\tEnabled:     {}\n",
        long_version(&info),
        features.join(", ")
    )
}

/// The `-o json|yaml` view of one node's reply (protojson field names).
#[derive(Debug, Serialize)]
struct VersionView {
    metadata: MetadataView,
    version: InfoView,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<FeaturesView>,
}

#[derive(Debug, Serialize)]
struct MetadataView {
    hostname: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoView {
    tag: String,
    sha: String,
    built: String,
    go_version: String,
    os: String,
    arch: String,
}

impl From<&api::machine::VersionInfo> for InfoView {
    fn from(info: &api::machine::VersionInfo) -> Self {
        Self {
            tag: info.tag.clone(),
            sha: info.sha.clone(),
            built: info.built.clone(),
            go_version: info.go_version.clone(),
            os: info.os.clone(),
            arch: info.arch.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
struct PlatformView {
    name: String,
    mode: String,
}

#[derive(Debug, Serialize)]
struct FeaturesView {
    rbac: bool,
}

fn view(node: &str, reply: &api::machine::Version) -> VersionView {
    VersionView {
        metadata: MetadataView {
            hostname: node.to_owned(),
        },
        version: InfoView::from(&reply.version.clone().unwrap_or_default()),
        platform: reply.platform.as_ref().map(|platform| PlatformView {
            name: platform.name.clone(),
            mode: platform.mode.clone(),
        }),
        features: reply.features.map(|features| FeaturesView {
            rbac: features.rbac,
        }),
    }
}

/// Runs `talosctl version`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn run(global: &GlobalArgs, args: &VersionArgs) -> anyhow::Result<()> {
    let format = if args.json {
        OutputFormat::Json
    } else {
        args.output
    };
    if format == OutputFormat::Text {
        let mut text = String::from("Client:\n");
        if args.short {
            text.push_str(&format!("{NAME} {}\n", client_version().tag));
        } else {
            text.push_str(&long_version(&client_version()));
        }
        if args.client {
            return output::out(&text);
        }
        text.push_str("Server:\n");
        output::out(&text)?;
    } else if args.client {
        let info = InfoView::from(&client_version());
        return output::print_views(&[info], format);
    }

    let client = Client::connect(
        global,
        Options {
            insecure: args.insecure,
            nodes: NodePolicy::Required,
            ..Options::default()
        },
    )?;
    let response = client
        .machine_call(|mut m, r| async move { m.version(r).await })
        .await?;
    let results = client.split(response.messages);
    if format == OutputFormat::Text {
        let mut text = String::new();
        for (node, reply) in &results.ok {
            text.push_str(&server_block(node, reply));
        }
        output::out(&text)?;
    } else {
        let views: Vec<VersionView> = results
            .ok
            .iter()
            .map(|(node, reply)| view(node, reply))
            .collect();
        output::print_views(&views, format)?;
    }
    client::report(&results.failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_block_like_upstream() {
        let reply = api::machine::Version {
            metadata: None,
            version: Some(api::machine::VersionInfo {
                tag: "v1.0.0".into(),
                sha: "abc".into(),
                built: String::new(),
                go_version: "rust".into(),
                os: "linux".into(),
                arch: "amd64".into(),
            }),
            platform: None,
            features: Some(api::machine::FeaturesInfo { rbac: true }),
        };
        assert_eq!(
            server_block("10.5.0.2", &reply),
            "\tNODE:        10.5.0.2\n\
             \tTag:         v1.0.0\n\
             \tSHA:         abc\n\
             \tBuilt:       \n\
             \tGo version:  rust\n\
             \tOS/Arch:     linux/amd64\n\
             \tEnabled:     RBAC\n"
        );
        let maintenance = api::machine::Version {
            features: None,
            ..reply
        };
        assert!(server_block("n", &maintenance).ends_with("\tEnabled:     \n"));
    }

    #[test]
    fn client_tag_is_the_crate_version() {
        assert_eq!(
            client_version().tag,
            format!("v{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
