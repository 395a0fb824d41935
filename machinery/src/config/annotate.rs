//! Comments for a generated machine config, as `talosctl gen config` adds
//! them (`--with-docs`, `--with-examples`): a line or two above each field
//! saying what it does, and commented examples of settings the config
//! leaves out. Comments change nothing a parser sees: should they ever,
//! the config is written without them.

/// What to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotations {
    /// What each field does, above it.
    pub docs: bool,
    /// Commented examples at the end of the sections they belong to.
    pub examples: bool,
}

/// Field path (keys joined with `.`, `[]` for a list item) and what it does.
const DOCS: &[(&str, &str)] = &[
    ("version", "Schema of this document; always v1alpha1."),
    (
        "debug",
        "Copy every service's log to the console (for debugging).",
    ),
    (
        "persist",
        "Keep the config on the node's STATE partition (always true).",
    ),
    ("machine", "Settings of this machine."),
    (
        "machine.type",
        "Role of the machine: controlplane or worker.",
    ),
    (
        "machine.token",
        "Token a machine presents to trustd to have its API certificate signed.",
    ),
    (
        "machine.ca",
        "Root of the Talos API PKI: client and server certificates chain to it.\n\
         Workers carry only the certificate.",
    ),
    ("machine.ca.crt", "Certificate, base64 of its PEM."),
    ("machine.ca.key", "Private key, base64 of its PEM."),
    (
        "machine.acceptedCAs",
        "Further CAs whose client certificates the API accepts (during a CA rotation).",
    ),
    (
        "machine.certSANs",
        "Extra names and addresses for the API server certificate of this machine.",
    ),
    (
        "machine.kubelet",
        "Kubelet settings. This node runs no Kubernetes yet: the Kubernetes settings\n(kubelet, node labels and taints, kubePrism, most of cluster) are checked\nand kept for upstream compatibility, not applied.",
    ),
    ("machine.kubelet.image", "Kubelet image."),
    (
        "machine.kubelet.extraArgs",
        "Extra command-line flags for the kubelet.",
    ),
    (
        "machine.kubelet.defaultRuntimeSeccompProfileEnabled",
        "Containers run under the runtime's default seccomp profile.",
    ),
    (
        "machine.kubelet.disableManifestsDirectory",
        "The kubelet reads no static pods from /etc/kubernetes/manifests.",
    ),
    (
        "machine.network",
        "Host networking: hostname, links, addresses, routes and DNS.\n\
         Links the config leaves out are brought up with DHCP.",
    ),
    (
        "machine.network.hostname",
        "Static hostname of the machine.",
    ),
    (
        "machine.network.interfaces",
        "Links to configure, by name or by a device selector.",
    ),
    (
        "machine.network.nameservers",
        "DNS servers, in order, instead of those DHCP offers.",
    ),
    (
        "machine.network.searchDomains",
        "DNS search domains for short names.",
    ),
    (
        "machine.network.extraHostEntries",
        "Extra lines for /etc/hosts.",
    ),
    (
        "machine.network.interfaces[].interface",
        "Link name, for example eth0.",
    ),
    (
        "machine.network.interfaces[].deviceSelector",
        "Picks the link by what it is (MAC address, PCI ID, driver, bus path)\nrather than by name.",
    ),
    (
        "machine.network.interfaces[].addresses",
        "Static addresses, each with its prefix length.",
    ),
    (
        "machine.network.interfaces[].routes",
        "Static routes through this link.",
    ),
    (
        "machine.network.interfaces[].dhcp",
        "Take an address by DHCP.",
    ),
    ("machine.network.interfaces[].mtu", "MTU of the link."),
    ("machine.network.interfaces[].vlans", "VLANs on this link."),
    ("machine.install", "Installation to disk."),
    (
        "machine.install.disk",
        "Disk to install to, as a /dev path.",
    ),
    (
        "machine.install.diskSelector",
        "Picks the install disk by what it is (size, model, serial, bus path, ...);\nwins over disk.",
    ),
    (
        "machine.install.trustedKeys",
        "Further public keys (ed25519, PEM) whose signed installer images this\nmachine accepts, besides the keys built into its image.",
    ),
    (
        "machine.install.image",
        "Installer image that is written to the disk; its signature is checked first.",
    ),
    (
        "machine.install.wipe",
        "Zero the disk before installing. Not done by this node: installing writes\n\
         a new partition table and every partition (true is warned about).",
    ),
    (
        "machine.files",
        "Files written at boot: created under /var, or appended to or overwriting\n\
         an existing file elsewhere.",
    ),
    (
        "machine.env",
        "Environment variables for every service and the installer (for example a proxy).",
    ),
    ("machine.time", "Time synchronisation."),
    ("machine.time.servers", "NTP servers to synchronise with."),
    ("machine.time.disabled", "Turn time synchronisation off."),
    (
        "machine.sysctls",
        "Kernel parameters, set at boot and whenever the config changes.",
    ),
    (
        "machine.sysfs",
        "sysfs values, written at boot and whenever the config changes.",
    ),
    (
        "machine.registries",
        "Image registry mirrors and their credentials.",
    ),
    ("machine.features", "Feature switches."),
    (
        "machine.features.rbac",
        "Authorise API calls by the roles in the caller's certificate.",
    ),
    (
        "machine.features.stableHostname",
        "Without a configured hostname, the machine takes one that stays the same\nacross reboots (always so on this node).",
    ),
    (
        "machine.features.apidCheckExtKeyUsage",
        "The API accepts only client certificates made for client authentication\n(always so on this node).",
    ),
    (
        "machine.features.diskQuotaSupport",
        "XFS project quotas on the EPHEMERAL partition, for Kubernetes' local storage\n(accepted; this node does not turn them on).",
    ),
    (
        "machine.features.kubePrism",
        "Local load balancer in front of the Kubernetes API servers (Kubernetes).",
    ),
    ("machine.features.kubePrism.enabled", "Whether it runs."),
    (
        "machine.features.kubePrism.port",
        "Port it listens on, on localhost.",
    ),
    (
        "machine.features.hostDNS",
        "Caching DNS resolver on the host. Accepted; this node does not run one yet.",
    ),
    ("machine.features.hostDNS.enabled", "Whether it runs."),
    (
        "machine.features.hostDNS.forwardKubeDNSToHost",
        "Cluster DNS forwards the names it does not know to the host's resolver.",
    ),
    (
        "machine.logging",
        "Where service logs are sent, besides the node.",
    ),
    (
        "machine.nodeLabels",
        "Labels the Kubernetes node of this machine carries.",
    ),
    (
        "machine.nodeTaints",
        "Taints the Kubernetes node of this machine carries.",
    ),
    (
        "cluster",
        "Settings shared by every machine of the cluster: Kubernetes, etcd and\ndiscovery. This node runs none of them yet: they are checked and kept for\nupstream compatibility, not applied.",
    ),
    (
        "cluster.id",
        "Identity of the cluster for discovery; the same on every machine.",
    ),
    (
        "cluster.secret",
        "Secret shared by the cluster's machines for discovery; keep it private.",
    ),
    (
        "cluster.controlPlane",
        "Where the Kubernetes API of the cluster is reached.",
    ),
    (
        "cluster.controlPlane.endpoint",
        "URL of the Kubernetes API: a load balancer, a DNS name or a control plane address.",
    ),
    ("cluster.clusterName", "Name of the cluster."),
    ("cluster.network", "Pod and service networking."),
    (
        "cluster.network.dnsDomain",
        "DNS domain of the cluster's services.",
    ),
    ("cluster.network.podSubnets", "Address ranges for pods."),
    (
        "cluster.network.serviceSubnets",
        "Address ranges for services.",
    ),
    (
        "cluster.token",
        "Bootstrap token machines use to join Kubernetes.",
    ),
    (
        "cluster.secretboxEncryptionSecret",
        "Key that encrypts Kubernetes secrets at rest (secretbox).",
    ),
    (
        "cluster.ca",
        "Root of the Kubernetes PKI. Workers carry only the certificate.",
    ),
    (
        "cluster.aggregatorCA",
        "CA of the Kubernetes front proxy (API aggregation).",
    ),
    (
        "cluster.serviceAccount",
        "Key that signs Kubernetes service account tokens.",
    ),
    ("cluster.apiServer", "kube-apiserver settings."),
    ("cluster.apiServer.image", "kube-apiserver image."),
    (
        "cluster.apiServer.certSANs",
        "Extra names and addresses for the kube-apiserver certificate.",
    ),
    (
        "cluster.apiServer.disablePodSecurityPolicy",
        "Leave the removed PodSecurityPolicy admission plugin off.",
    ),
    (
        "cluster.apiServer.admissionControl",
        "Configuration of admission plugins, by name.",
    ),
    (
        "cluster.apiServer.auditPolicy",
        "Audit policy of the kube-apiserver.",
    ),
    (
        "cluster.controllerManager",
        "kube-controller-manager settings.",
    ),
    (
        "cluster.controllerManager.image",
        "kube-controller-manager image.",
    ),
    ("cluster.proxy", "kube-proxy settings."),
    ("cluster.proxy.image", "kube-proxy image."),
    ("cluster.scheduler", "kube-scheduler settings."),
    ("cluster.scheduler.image", "kube-scheduler image."),
    (
        "cluster.discovery",
        "How the cluster's machines find each other.",
    ),
    ("cluster.discovery.enabled", "Whether discovery is used."),
    (
        "cluster.discovery.registries",
        "Where members are registered and looked up.",
    ),
    ("cluster.etcd", "etcd settings."),
    ("cluster.etcd.ca", "Root of the etcd PKI."),
    (
        "cluster.extraManifests",
        "URLs of further manifests applied at bootstrap.",
    ),
    (
        "cluster.inlineManifests",
        "Manifests applied at bootstrap, given inline.",
    ),
    (
        "cluster.allowSchedulingOnControlPlanes",
        "Let workloads run on control plane machines.",
    ),
];

/// A commented example of settings a section may take.
struct Example {
    /// The section it belongs to, as in [`DOCS`].
    parent: &'static str,
    /// What it shows.
    title: &'static str,
    /// The settings, as they would be written in the section.
    yaml: &'static str,
}

const EXAMPLES: &[Example] = &[
    Example {
        parent: "machine.network",
        title: "A static hostname.",
        yaml: "hostname: node-1",
    },
    Example {
        parent: "machine.network",
        title: "A static address and default route on eth0.",
        yaml: "interfaces:\n\
               - interface: eth0\n\
               \x20 addresses:\n\
               \x20 - 192.168.2.10/24\n\
               \x20 routes:\n\
               \x20 - network: 0.0.0.0/0\n\
               \x20   gateway: 192.168.2.1\n\
               \x20 mtu: 1500",
    },
    Example {
        parent: "machine.network",
        title: "DNS servers instead of those DHCP offers.",
        yaml: "nameservers:\n- 9.9.9.9\n- 1.1.1.1",
    },
    Example {
        parent: "machine",
        title: "NTP servers to synchronise with.",
        yaml: "time:\n  servers:\n  - time.cloudflare.com",
    },
    Example {
        parent: "machine",
        title: "Kernel parameters.",
        yaml: "sysctls:\n  net.ipv4.ip_forward: '1'",
    },
    Example {
        parent: "machine",
        title: "Environment for every service, for example a proxy.",
        yaml: "env:\n  https_proxy: http://proxy.example.com:3128",
    },
    Example {
        parent: "machine",
        title: "A file written at boot.",
        yaml: "files:\n\
               - content: |\n\
               \x20   [plugins]\n\
               \x20 permissions: 0o644\n\
               \x20 path: /var/etc/example.toml\n\
               \x20 op: create",
    },
    Example {
        parent: "machine",
        title: "Service logs sent to a collector as JSON lines.",
        yaml: "logging:\n\
               \x20 destinations:\n\
               \x20 - endpoint: udp://127.0.0.1:12345/\n\
               \x20   format: json_lines",
    },
];

/// What a line of the YAML is.
enum Line {
    /// A mapping key, at `indent`, with its path.
    Key { indent: usize, path: String },
    /// Inside a block scalar (`|`, `>`): text, whatever it looks like.
    Text,
    /// A document separator (`---`).
    Separator,
    /// Anything else: blank, a comment, a list item of a scalar.
    Other,
}

/// A document separator: `---` at the start of a line (a block scalar's
/// text, `-----BEGIN ...` for one, is always indented in a mapping).
fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ")
}

/// What each of `lines` is, following keys by indentation.
fn classify(lines: &[&str]) -> Vec<Line> {
    let mut out = Vec::with_capacity(lines.len());
    // (indent, segment); a list item is `[]` at its dash's indent.
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Lines more indented than this belong to a block scalar.
    let mut text_above: Option<usize> = None;
    for line in lines {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(limit) = text_above {
            if trimmed.is_empty() || indent > limit {
                out.push(Line::Text);
                continue;
            }
            text_above = None;
        }
        if is_separator(line) {
            stack.clear();
            out.push(Line::Separator);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(Line::Other);
            continue;
        }
        let (indent, rest) = match trimmed.strip_prefix("- ").or_else(|| {
            // A list item that is itself a nested list or an empty item.
            (trimmed == "-").then_some("")
        }) {
            Some(item) => {
                while stack.last().is_some_and(|(i, _)| *i > indent) {
                    stack.pop();
                }
                if stack.last().is_some_and(|(i, s)| *i == indent && s == "[]") {
                    stack.pop();
                }
                stack.push((indent, "[]".to_owned()));
                let item = item.trim_start();
                if starts_block_scalar(item) {
                    // `- |`: the item is text, indented past the dash.
                    text_above = Some(indent);
                    out.push(Line::Other);
                    continue;
                }
                (indent + 2, item)
            }
            None => (indent, trimmed),
        };
        let Some((key, value)) = split_key(rest) else {
            out.push(Line::Other);
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let mut path: Vec<&str> = stack.iter().map(|(_, s)| s.as_str()).collect();
        path.push(key);
        let path = path.join(".").replace(".[]", "[]");
        stack.push((indent, key.to_owned()));
        if starts_block_scalar(value) {
            text_above = Some(indent);
        }
        out.push(Line::Key { indent, path });
    }
    out
}

/// `|`, `|-`, `>+`, `|2` and the like: a block scalar follows.
fn starts_block_scalar(value: &str) -> bool {
    value.starts_with(['|', '>'])
}

/// `key: value` or `key:`. A quoted key is kept with its quotes, so it
/// matches no field, but its value is still seen.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let key_end = match text.chars().next()? {
        quote @ ('\'' | '"') => {
            let mut escaped = false;
            let mut end = None;
            for (i, c) in text.char_indices().skip(1) {
                if quote == '"' && c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if c == quote && !escaped {
                    // In single quotes, '' is a quote.
                    if quote == '\'' && text[i + 1..].starts_with('\'') {
                        escaped = true;
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                escaped = false;
            }
            end?
        }
        '{' | '[' => return None,
        _ => {
            if let Some(key) = text.strip_suffix(':') {
                return (!key.contains(": ")).then_some((key, ""));
            }
            text.find(": ")?
        }
    };
    let (key, rest) = text.split_at(key_end);
    let value = rest.strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((key, value.trim_start()))
}

/// The index of the last line of the block a key at `start` opens.
fn block_end(lines: &[&str], kinds: &[Line], start: usize, indent: usize) -> usize {
    let mut end = start;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        match kinds[i] {
            Line::Separator => break,
            Line::Text => {
                end = i;
                continue;
            }
            Line::Key { .. } | Line::Other => {}
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let at = line.len() - trimmed.len();
        if !(at > indent || (at == indent && trimmed.starts_with('-'))) {
            break;
        }
        end = i;
    }
    end
}

fn comment(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// Every document of `yaml`, as a parser sees them.
fn values(yaml: &str) -> Option<Vec<serde_yaml_ng::Value>> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(serde_yaml_ng::Value::deserialize)
        .collect::<Result<_, _>>()
        .ok()
}

/// The keys an example sets at its top.
fn example_keys(example: &Example) -> Vec<String> {
    serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(example.yaml)
        .map(|map| {
            map.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `yaml` with the comments `what` asks for. Should the comments ever
/// change what a parser reads, `yaml` is returned as it is.
#[must_use]
pub fn annotate(yaml: &str, what: Annotations) -> String {
    if !what.docs && !what.examples {
        return yaml.to_owned();
    }
    let annotated = with_comments(yaml, what);
    match (values(yaml), values(&annotated)) {
        (Some(before), Some(after)) if before == after => annotated,
        _ => yaml.to_owned(),
    }
}

fn with_comments(yaml: &str, what: Annotations) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let kinds = classify(&lines);
    let paths: std::collections::HashSet<&str> = kinds
        .iter()
        .filter_map(|k| match k {
            Line::Key { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    // Examples to write after line i: (indent of the section, example).
    let mut after: Vec<Vec<(usize, &Example)>> = vec![Vec::new(); lines.len()];
    if what.examples {
        for (i, kind) in kinds.iter().enumerate() {
            let Line::Key { indent, path } = kind else {
                continue;
            };
            for example in EXAMPLES.iter().filter(|e| e.parent == path) {
                // Not for what the section already sets: uncommented, it
                // would set it twice.
                let set = example_keys(example)
                    .iter()
                    .any(|k| paths.contains(format!("{path}.{k}").as_str()));
                if !set {
                    after[block_end(&lines, &kinds, i, *indent)].push((*indent, example));
                }
            }
        }
        // A nested section's examples before its parent's.
        for list in &mut after {
            list.sort_by_key(|(indent, _)| std::cmp::Reverse(*indent));
        }
    }
    let mut out = String::with_capacity(yaml.len() * 2);
    for (i, line) in lines.iter().enumerate() {
        if what.docs
            && let Line::Key { indent, path } = &kinds[i]
            && let Some((_, doc)) = DOCS.iter().find(|(p, _)| p == path)
        {
            // A list item's first key gets its comment above the item.
            let at = if line.trim_start().starts_with("- ") {
                indent.saturating_sub(2)
            } else {
                *indent
            };
            comment(&mut out, at, doc);
        }
        out.push_str(line);
        out.push('\n');
        for (indent, example) in &after[i] {
            out.push('\n');
            comment(&mut out, indent + 2, &format!("# {}", example.title));
            comment(&mut out, indent + 2, example.yaml);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const ALL: Annotations = Annotations {
        docs: true,
        examples: true,
    };

    fn generated() -> String {
        let bundle =
            crate::secrets::SecretsBundle::generate(std::time::SystemTime::now()).expect("secrets");
        let options = crate::generate::GenOptions::new("demo", "https://10.5.0.1:6443");
        crate::generate::generate(&bundle, &options, std::time::SystemTime::now())
            .expect("generated")
            .controlplane_yaml
    }

    #[test]
    fn comments_change_nothing_a_parser_sees() {
        let plain = generated();
        let annotated = annotate(&plain, ALL);
        assert!(annotated.len() > plain.len() + 2000, "{annotated}");
        let a: serde_yaml_ng::Value = serde_yaml_ng::from_str(&plain).expect("plain");
        let b: serde_yaml_ng::Value = serde_yaml_ng::from_str(&annotated).expect("annotated");
        assert_eq!(a, b);
        parse(annotated.as_bytes()).expect("still a valid config");
        // Without comments asked for, the text is left as it is.
        let none = Annotations {
            docs: false,
            examples: false,
        };
        assert_eq!(annotate(&plain, none), plain);
    }

    #[test]
    fn docs_sit_above_their_fields() {
        let annotated = annotate(
            &generated(),
            Annotations {
                docs: true,
                examples: false,
            },
        );
        let lines: Vec<&str> = annotated.lines().collect();
        let above = |field: &str| {
            let i = lines
                .iter()
                .position(|l| *l == field || l.starts_with(&format!("{field} ")))
                .unwrap_or_else(|| panic!("{field} in\n{annotated}"));
            lines[i - 1]
        };
        assert_eq!(
            above("version: v1alpha1"),
            "# Schema of this document; always v1alpha1."
        );
        assert_eq!(
            above("  type: controlplane"),
            "  # Role of the machine: controlplane or worker."
        );
        assert_eq!(
            above("    endpoint: https://10.5.0.1:6443"),
            "    # URL of the Kubernetes API: a load balancer, a DNS name or a control plane address."
        );
        assert_eq!(
            above("      port: 7445"),
            "      # Port it listens on, on localhost."
        );
        assert!(!annotated.contains("# # "), "no examples asked for");
    }

    #[test]
    fn examples_are_commented_valid_settings_of_their_section() {
        let plain = generated();
        let annotated = annotate(
            &plain,
            Annotations {
                docs: false,
                examples: true,
            },
        );
        for example in EXAMPLES {
            let title = format!("# # {}", example.title);
            assert!(annotated.contains(&title), "{title} in\n{annotated}");
            // Uncommented into its section, the example is a config this
            // node takes and applies.
            let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&plain).expect("plain");
            let settings: serde_yaml_ng::Mapping =
                serde_yaml_ng::from_str(example.yaml).expect("example yaml");
            let mut section = &mut config;
            for key in example.parent.split('.') {
                section = section.get_mut(key).expect("section present");
            }
            if !section.is_mapping() {
                *section = serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new());
            }
            let section = section.as_mapping_mut().expect("mapping");
            for (k, v) in settings {
                assert!(section.get(&k).is_none(), "{k:?} already set");
                section.insert(k, v);
            }
            let text = serde_yaml_ng::to_string(&config).expect("yaml");
            let parsed =
                parse(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", example.title));
            assert_eq!(
                parsed.not_applied(),
                Vec::<String>::new(),
                "{}",
                example.title
            );
        }
    }

    #[test]
    fn the_example_comments_uncomment_to_the_examples() {
        // Taking "# " off an example's lines gives the example, at its
        // section's child indent.
        let annotated = annotate(
            &generated(),
            Annotations {
                docs: false,
                examples: true,
            },
        );
        let lines: Vec<&str> = annotated.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_start() == "# # A static address and default route on eth0.")
            .expect("example");
        let indent = lines[start].len() - lines[start].trim_start().len();
        assert_eq!(indent, 4, "{}", lines[start]);
        let body: Vec<String> = lines[start + 1..]
            .iter()
            .take_while(|l| l.trim_start().starts_with('#') && !l.trim_start().starts_with("# #"))
            .map(|l| l[indent..].strip_prefix("# ").unwrap_or("").to_owned())
            .collect();
        assert_eq!(body.join("\n"), EXAMPLES[1].yaml);
    }

    /// The comments themselves, without the fallback, change nothing.
    fn assert_unchanged(yaml: &str) -> String {
        let annotated = with_comments(yaml, ALL);
        assert_eq!(
            values(&annotated).expect("annotated parses"),
            values(yaml).expect("input parses"),
            "{annotated}"
        );
        annotated
    }

    #[test]
    fn text_that_looks_like_yaml_stays_text() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAAAAA\n-----END PUBLIC KEY-----\n";
        let bundle =
            crate::secrets::SecretsBundle::generate(std::time::SystemTime::now()).expect("secrets");
        let mut options = crate::generate::GenOptions::new("demo", "https://10.5.0.1:6443");
        options.installer_keys.push(pem.to_owned());
        let generated = crate::generate::generate(&bundle, &options, std::time::SystemTime::now())
            .expect("generated")
            .controlplane_yaml;
        let annotated = assert_unchanged(&generated);
        // The docs after the key go on (the PEM's dashes end nothing), and
        // the section's examples come after the key, not inside it.
        assert!(
            annotated.contains("  # Feature switches.\n  features:"),
            "{annotated}"
        );
        let key_end = annotated.find("-----END PUBLIC KEY-----").expect("the key");
        let example = annotated.find("# # NTP servers").expect("an example");
        assert!(example > key_end, "{annotated}");

        // A file holding a certificate, udev rules holding what looks like
        // a document separator and a field, a quoted key with text.
        let patched = crate::generate::apply_patch(
            &generated,
            "machine:\n  files:\n  - content: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n---\\n-----END CERTIFICATE-----\\n\"\n    path: /var/etc/ca.pem\n    op: create\n  udev:\n    rules:\n    - \"# ---\\n---\\ndebug: x\\nversion: y\\n\"\n  env:\n    'odd: key': \"a\\nversion: b\\n\"\n",
        )
        .expect("patched");
        assert!(
            patched.contains("- |"),
            "block scalars in the input: {patched}"
        );
        let annotated = assert_unchanged(&patched);
        assert!(
            annotated.contains("\n# Settings shared by every machine of the cluster"),
            "{annotated}"
        );
        assert_eq!(annotate(&patched, ALL), annotated);
    }

    #[test]
    fn examples_skip_what_the_section_sets() {
        let patched = crate::generate::apply_patch(
            &generated(),
            "machine:\n  network:\n    hostname: set-here\n",
        )
        .expect("patched");
        let annotated = annotate(&patched, ALL);
        assert!(!annotated.contains("# # A static hostname."), "{annotated}");
        assert!(annotated.contains("# # A static address and default route on eth0."));
    }

    #[test]
    fn block_scalars_and_list_items_are_followed() {
        // A list item that is text, in a list whose items' fields have
        // docs: the text is left alone.
        assert_unchanged(
            "machine:\n  network:\n    interfaces:\n    - |\n      interface: eth9\n      mtu: 1\n",
        );
        let yaml = "machine:\n  files:\n  - content: |\n      type: x\n      network: y\n    path: /var/f\n  network: {}\ncluster:\n  clusterName: c\n";
        let annotated = annotate(
            yaml,
            Annotations {
                docs: true,
                examples: false,
            },
        );
        // The block scalar's lines look like keys and are left alone.
        assert!(
            annotated.contains("|\n      type: x\n      network: y\n"),
            "{annotated}"
        );
        assert!(
            annotated.contains("  # an existing file elsewhere.\n  files:\n"),
            "{annotated}"
        );
        assert!(
            annotated
                .contains("  # Host networking: hostname, links, addresses, routes and DNS.\n"),
            "{annotated}"
        );
        assert!(
            annotated.contains("  # Name of the cluster.\n  clusterName: c\n"),
            "{annotated}"
        );
        assert_eq!(
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&annotated).expect("yaml"),
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(yaml).expect("yaml")
        );
    }
}
