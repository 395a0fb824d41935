//! `talosctl config ...`: the talosconfig file (only `config new` talks to
//! a node).

use std::io::BufRead as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use machinery::config::v1alpha1::Secret;
use machinery::talosconfig::{Context, TalosConfig};
use serde::Serialize;

use crate::cli::{
    ConfigAddArgs, ConfigArgs, ConfigCommand, ConfigNewArgs, ConfigRemoveArgs, GlobalArgs,
    OutputFormat,
};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output::{self, Table};

/// Runs a `talosctl config` subcommand.
///
/// # Errors
/// The talosconfig cannot be read or written, or the subcommand failed.
pub async fn run(global: &GlobalArgs, args: ConfigArgs) -> anyhow::Result<()> {
    let path = client::talosconfig_path(global);
    match args.command {
        ConfigCommand::Add(args) => add(&path, &args),
        ConfigCommand::Context { name } => switch(&path, &name),
        ConfigCommand::Contexts => contexts(&path),
        ConfigCommand::Endpoint { addresses } => edit_current(&path, global, |context| {
            context.endpoints = trimmed(&addresses);
        }),
        ConfigCommand::Node { addresses } => edit_current(&path, global, |context| {
            context.nodes = trimmed(&addresses);
        }),
        ConfigCommand::Info { output } => info(&path, global, output),
        ConfigCommand::Merge { from } => merge(&path, &from),
        ConfigCommand::Remove(args) => remove(&path, &args),
        ConfigCommand::New(args) => new(global, args).await,
    }
}

fn trimmed(values: &[String]) -> Vec<String> {
    values.iter().map(|value| value.trim().to_owned()).collect()
}

fn save(config: &TalosConfig, path: &Path) -> anyhow::Result<()> {
    config.save(path).map_err(|err| anyhow!("{err}"))
}

fn add(path: &Path, args: &ConfigAddArgs) -> anyhow::Result<()> {
    let mut config = client::load_talosconfig_or_default(path)?;
    let mut context = Context::default();
    if let Some(ca) = &args.ca {
        let bytes =
            std::fs::read(ca).with_context(|| format!("error reading CA {}", ca.display()))?;
        context.ca = machinery::base64::encode(bytes);
    }
    match (&args.crt, &args.key) {
        (None, None) => {}
        (Some(crt), Some(key)) => {
            let crt_bytes = std::fs::read(crt)
                .with_context(|| format!("error reading certificate {}", crt.display()))?;
            let key_bytes = std::fs::read(key)
                .with_context(|| format!("error reading key {}", key.display()))?;
            context.crt = machinery::base64::encode(crt_bytes);
            context.key = Secret::new(machinery::base64::encode(key_bytes));
        }
        _ => bail!("if either the 'crt' or 'key' flag is specified, both are required"),
    }
    config.contexts.insert(args.name.clone(), context);
    save(&config, path)
}

fn switch(path: &Path, name: &str) -> anyhow::Result<()> {
    let mut config = client::load_talosconfig(path)?;
    config.current(Some(name)).map_err(|err| anyhow!("{err}"))?;
    config.context = name.to_owned();
    save(&config, path)
}

/// The `config contexts` table.
#[must_use]
pub fn contexts_table(config: &TalosConfig) -> Table {
    let mut table = Table::new(&["CURRENT", "NAME", "ENDPOINTS", "NODES"]);
    for (name, context) in &config.contexts {
        let current = if *name == config.context { "*" } else { "" };
        let nodes = if context.nodes.len() > 3 {
            format!("{}...", context.nodes[..3].join(","))
        } else {
            context.nodes.join(",")
        };
        table.push(vec![
            current.to_owned(),
            name.clone(),
            context.endpoints.join(","),
            nodes,
        ]);
    }
    table
}

fn contexts(path: &Path) -> anyhow::Result<()> {
    let config = client::load_talosconfig_or_default(path)?;
    contexts_table(&config).print()
}

fn edit_current(
    path: &Path,
    global: &GlobalArgs,
    edit: impl FnOnce(&mut Context),
) -> anyhow::Result<()> {
    let mut config = client::load_talosconfig(path)?;
    let name = config
        .current(global.context.as_deref())
        .map_err(|err| anyhow!("{err}"))?
        .0
        .to_owned();
    let Some(context) = config.contexts.get_mut(&name) else {
        bail!("context {name:?} is not defined");
    };
    edit(context);
    save(&config, path)
}

/// What `config info` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// The context name.
    pub context: String,
    /// Its nodes.
    pub nodes: Vec<String>,
    /// Its endpoints.
    pub endpoints: Vec<String>,
    /// Roles of the client certificate (sorted).
    pub roles: Vec<String>,
    /// Relative expiry, e.g. `1 year from now`.
    #[serde(rename = "certTTL")]
    pub cert_ttl: String,
    /// Expiry date, `2006-01-02`.
    pub cert_not_after: String,
}

/// The info of the context `name`.
///
/// # Errors
/// The client certificate cannot be decoded.
pub fn context_info(name: &str, context: &Context, now: SystemTime) -> anyhow::Result<Info> {
    let mut info = Info {
        context: name.to_owned(),
        nodes: context.nodes.clone(),
        endpoints: context.endpoints.clone(),
        roles: Vec::new(),
        cert_ttl: String::new(),
        cert_not_after: String::new(),
    };
    if !context.crt.is_empty() {
        let crt = context.crt_pem().map_err(|err| anyhow!("{err}"))?;
        let cert = machinery::pki::cert_info(&crt).map_err(|err| anyhow!("{err}"))?;
        let mut roles = cert.organizations.clone();
        roles.sort();
        roles.dedup();
        info.roles = roles;
        info.cert_ttl = output::rel_time(cert.not_after, now, "ago", "from now");
        info.cert_not_after = output::ymd(cert.not_after);
    }
    Ok(info)
}

/// Upstream's text rendering of [`Info`].
#[must_use]
pub fn info_text(info: &Info) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "not defined".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut text = format!(
        "Current context:     {}\nNodes:               {}\nEndpoints:           {}\n",
        info.context,
        list(&info.nodes),
        list(&info.endpoints)
    );
    if !info.roles.is_empty() {
        text.push_str(&format!("Roles:               {}\n", info.roles.join(", ")));
    }
    if !info.cert_ttl.is_empty() {
        text.push_str(&format!(
            "Certificate expires: {} ({})\n",
            info.cert_ttl, info.cert_not_after
        ));
    }
    text
}

fn info(path: &Path, global: &GlobalArgs, format: OutputFormat) -> anyhow::Result<()> {
    let config = client::load_talosconfig(path)?;
    let (name, context) = config
        .current(global.context.as_deref())
        .map_err(|err| anyhow!("{err}"))?;
    let info = context_info(name, context, SystemTime::now())?;
    match format {
        OutputFormat::Text => output::out(&info_text(&info)),
        OutputFormat::Json => output::out(&format!("{}\n", output::to_json_pretty(&info)?)),
        OutputFormat::Yaml => output::out(&output::to_yaml(&info)?),
    }
}

fn merge(path: &Path, from: &Path) -> anyhow::Result<()> {
    let mut config = client::load_talosconfig_or_default(path)?;
    let other = TalosConfig::load(from).map_err(|err| anyhow!("error reading config: {err}"))?;
    for (from, to) in config.merge(other) {
        eprintln!("renamed talosconfig context {from:?} -> {to:?}");
    }
    save(&config, path)
}

fn confirm(prompt: &str) -> bool {
    eprint!("{prompt} [y/N]: ");
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
}

fn remove(path: &Path, args: &ConfigRemoveArgs) -> anyhow::Result<()> {
    if args.name.is_empty() {
        bail!("no context specified");
    }
    let mut config = client::load_talosconfig(path)?;
    if config.contexts.is_empty() {
        bail!("no contexts defined");
    }
    let matches: Vec<String> = config
        .contexts
        .keys()
        .filter(|name| machinery::glob::matches(&args.name, name))
        .cloned()
        .collect();
    if matches.is_empty() {
        bail!("no contexts matched {:?}", args.name);
    }
    let mut changed = false;
    for name in matches {
        if name == config.context {
            eprintln!(
                "skipping removal of current context {name:?}, please change it to another before removing"
            );
            continue;
        }
        if args.noconfirm {
            eprintln!("removing context {name:?}");
        } else if !confirm(&format!("remove context {name:?}?")) {
            continue;
        }
        config.contexts.remove(&name);
        changed = true;
    }
    if args.dry_run || !changed {
        return Ok(());
    }
    save(&config, path)
}

async fn new(global: &GlobalArgs, args: ConfigNewArgs) -> anyhow::Result<()> {
    super::generate::check_roles(&args.roles)?;
    let ttl =
        output::parse_go_duration(&args.crt_ttl).map_err(|err| anyhow!("--crt-ttl: {err}"))?;
    if args.path.exists() {
        bail!(
            "talosconfig file already exists: {:?}",
            args.path.display().to_string()
        );
    }
    let client = Client::connect(global, Options::nodes(NodePolicy::Single("talosconfig")))?;
    let request = api::machine::GenerateClientConfigurationRequest {
        roles: args.roles.clone(),
        crt_ttl: Some(output::proto_duration(ttl)),
    };
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move {
                client::machine(channel)
                    .generate_client_configuration(request)
                    .await
            }
        })
        .await?;
    let results = client.split(response.messages);
    client::report(&results.failed)?;
    let Some((_, reply)) = results.ok.into_iter().next() else {
        bail!("the node returned no client configuration");
    };
    let text = String::from_utf8(reply.talosconfig)
        .map_err(|_| anyhow!("the node returned a talosconfig that is not UTF-8"))?;
    let mut config =
        TalosConfig::from_yaml(&text, Path::new("<reply>")).map_err(|err| anyhow!("{err}"))?;
    // Make the new config immediately useful, as upstream does.
    let current = config.context.clone();
    if let Some(context) = config.contexts.get_mut(&current) {
        context.endpoints = client.endpoints().to_vec();
    }
    save(&config, &args.path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn contexts_listing() {
        let yaml = "context: a\ncontexts:\n  a:\n    endpoints: [10.5.0.2]\n    nodes: ['1', '2', '3', '4']\n  b:\n    endpoints: []\n";
        let config = TalosConfig::from_yaml(yaml, Path::new("test")).expect("parses");
        assert_eq!(
            contexts_table(&config).render(),
            "CURRENT   NAME   ENDPOINTS   NODES\n\
             *         a      10.5.0.2    1,2,3...\n\
             \x20         b                  \n"
        );
    }

    #[test]
    fn info_like_upstream() {
        let now = SystemTime::now();
        let ca = machinery::pki::generate_os_ca(now).expect("ca");
        let client = machinery::pki::issue_client_cert(
            &ca,
            &["os:reader".to_owned(), "os:admin".to_owned()],
            Duration::from_secs(8760 * 3600),
            now,
        )
        .expect("client");
        let context = Context::new(vec!["10.5.0.2".into()], &ca.cert_pem, &client);
        let info = context_info("prod", &context, now).expect("info");
        assert_eq!(info.roles, ["os:admin", "os:reader"]);
        assert_eq!(info.cert_ttl, "1 year from now");
        let text = info_text(&info);
        assert_eq!(
            text,
            format!(
                "Current context:     prod\n\
                 Nodes:               not defined\n\
                 Endpoints:           10.5.0.2\n\
                 Roles:               os:admin, os:reader\n\
                 Certificate expires: 1 year from now ({})\n",
                info.cert_not_after
            )
        );
    }

    #[test]
    fn add_switch_and_merge_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config");
        let ca = dir.path().join("ca.crt");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        add(
            &path,
            &ConfigAddArgs {
                name: "one".into(),
                ca: Some(ca),
                crt: None,
                key: None,
            },
        )
        .expect("add");
        let config = TalosConfig::load(&path).expect("load");
        assert!(config.contexts.contains_key("one"));
        switch(&path, "one").expect("switch");
        assert_eq!(TalosConfig::load(&path).expect("load").context, "one");
        let err = switch(&path, "missing").expect_err("unknown");
        assert!(err.to_string().contains("one"), "{err}");

        let other = dir.path().join("other");
        let mut incoming = TalosConfig::default();
        incoming.contexts.insert("one".into(), Context::default());
        incoming.context = "one".into();
        incoming.save(&other).expect("save");
        merge(&path, &other).expect("merge");
        let merged = TalosConfig::load(&path).expect("load");
        assert_eq!(merged.context, "one-1");
        assert!(merged.contexts.contains_key("one"));
    }
}
