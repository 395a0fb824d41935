//! Comments for a generated machine config, as `talosctl gen config` adds
//! them (`--with-docs`, `--with-examples`): a line or two above each field
//! saying what it does, and commented examples of settings the config
//! leaves out. Comments change nothing a parser sees.

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
    ("machine.kubelet", "Kubelet settings."),
    ("machine.kubelet.image", "Kubelet image to run."),
    (
        "machine.kubelet.extraArgs",
        "Extra command-line flags for the kubelet.",
    ),
    (
        "machine.kubelet.defaultRuntimeSeccompProfileEnabled",
        "Run containers under the runtime's default seccomp profile.",
    ),
    (
        "machine.kubelet.disableManifestsDirectory",
        "Do not read static pods from /etc/kubernetes/manifests.",
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
    ("machine.install", "Installation to disk."),
    (
        "machine.install.disk",
        "Disk to install to, as a /dev path.",
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
        "Environment variables for machined and every service (for example a proxy).",
    ),
    ("machine.time", "Time synchronisation."),
    ("machine.time.servers", "NTP servers to synchronise with."),
    ("machine.sysctls", "Kernel parameters set at boot."),
    ("machine.sysfs", "sysfs values written at boot."),
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
        "Without a configured hostname, derive one that stays the same across reboots.",
    ),
    (
        "machine.features.apidCheckExtKeyUsage",
        "The API accepts only client certificates whose key usage is client authentication.",
    ),
    (
        "machine.features.diskQuotaSupport",
        "Enable XFS project quotas on the EPHEMERAL partition.",
    ),
    (
        "machine.features.kubePrism",
        "Local load balancer in front of the Kubernetes API servers.",
    ),
    (
        "machine.features.kubePrism.enabled",
        "Run the load balancer.",
    ),
    (
        "machine.features.kubePrism.port",
        "Port it listens on, on localhost.",
    ),
    (
        "machine.features.hostDNS",
        "Caching DNS resolver on the host. Accepted; this node does not run one yet.",
    ),
    ("machine.features.hostDNS.enabled", "Run the resolver."),
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
        "Settings shared by every machine of the cluster.",
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
    ("cluster.apiServer.image", "kube-apiserver image to run."),
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
        "kube-controller-manager image to run.",
    ),
    ("cluster.proxy", "kube-proxy settings."),
    ("cluster.proxy.image", "kube-proxy image to run."),
    ("cluster.scheduler", "kube-scheduler settings."),
    ("cluster.scheduler.image", "kube-scheduler image to run."),
    (
        "cluster.discovery",
        "How the cluster's machines find each other.",
    ),
    ("cluster.discovery.enabled", "Take part in discovery."),
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
        parent: "machine.install",
        title: "The installer checks the installer image's signature against these keys too.",
        yaml: "trustedKeys:\n\
               - |\n\
               \x20 -----BEGIN PUBLIC KEY-----\n\
               \x20 MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
               \x20 -----END PUBLIC KEY-----",
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

/// Where a key line sits.
struct KeyLine {
    indent: usize,
    path: String,
}

/// The key lines of `lines` (by index), skipping block scalar contents.
fn key_lines(lines: &[&str]) -> Vec<Option<KeyLine>> {
    let mut out: Vec<Option<KeyLine>> = Vec::with_capacity(lines.len());
    // (indent, segment); a list item is `[]` at its dash's indent.
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Lines more indented than this belong to a block scalar.
    let mut scalar_above: Option<usize> = None;
    for line in lines {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(limit) = scalar_above {
            if trimmed.is_empty() || indent > limit {
                out.push(None);
                continue;
            }
            scalar_above = None;
        }
        if trimmed.starts_with("---") {
            stack.clear();
            out.push(None);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(None);
            continue;
        }
        let (indent, rest) = match trimmed.strip_prefix("- ") {
            Some(item) => {
                while stack.last().is_some_and(|(i, _)| *i > indent) {
                    stack.pop();
                }
                if stack.last().is_some_and(|(i, s)| *i == indent && s == "[]") {
                    stack.pop();
                }
                stack.push((indent, "[]".to_owned()));
                (indent + 2, item.trim_start())
            }
            None => (indent, trimmed),
        };
        let Some((key, value)) = split_key(rest) else {
            out.push(None);
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let mut path: Vec<&str> = stack.iter().map(|(_, s)| s.as_str()).collect();
        path.push(key);
        let path = path.join(".").replace(".[]", "[]");
        stack.push((indent, key.to_owned()));
        if value.starts_with('|') || value.starts_with('>') {
            scalar_above = Some(indent);
        }
        out.push(Some(KeyLine { indent, path }));
    }
    out
}

/// `key: value` or `key:`; quoted keys are not the schema's and are left alone.
fn split_key(text: &str) -> Option<(&str, &str)> {
    if text.starts_with(['\'', '"', '{', '[']) {
        return None;
    }
    if let Some(key) = text.strip_suffix(':') {
        return Some((key, ""));
    }
    let (key, value) = text.split_once(": ")?;
    Some((key, value.trim_start()))
}

/// The index of the last line of the block a key at `start` opens.
fn block_end(lines: &[&str], start: usize, indent: usize) -> usize {
    let mut end = start;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let at = line.len() - trimmed.len();
        let more = at > indent || (at == indent && trimmed.starts_with("- "));
        if !more || trimmed.starts_with("---") {
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

/// `yaml` with the comments `what` asks for.
#[must_use]
pub fn annotate(yaml: &str, what: Annotations) -> String {
    if !what.docs && !what.examples {
        return yaml.to_owned();
    }
    let lines: Vec<&str> = yaml.lines().collect();
    let keys = key_lines(&lines);
    // Examples to write after line i: (indent of the section, example).
    let mut after: Vec<Vec<(usize, &Example)>> = vec![Vec::new(); lines.len()];
    if what.examples {
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            for example in EXAMPLES.iter().filter(|e| e.parent == key.path) {
                after[block_end(&lines, i, key.indent)].push((key.indent, example));
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
            && let Some(key) = &keys[i]
            && let Some((_, doc)) = DOCS.iter().find(|(path, _)| *path == key.path)
        {
            // A list item's key gets its comment above the item.
            let indent = if line.trim_start().starts_with("- ") {
                key.indent - 2
            } else {
                key.indent
            };
            comment(&mut out, indent, doc);
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

    #[test]
    fn block_scalars_and_list_items_are_followed() {
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
