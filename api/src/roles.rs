//! Roles and the method → role table.
//!
//! Roles are the Organization values of a client certificate. apid reads
//! them, checks the called method against [`RULES`] before anything is
//! forwarded, and passes the verdict on as `talos-role` metadata. The table is
//! upstream's (see `docs/src/rbac.md`); a test checks that every method of
//! every contract has exactly one rule, so a new RPC cannot ship without a
//! decision. A method without a rule (an old or foreign client calling
//! something we do not declare) needs `os:admin`.

use std::fmt;

/// A built-in role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `os:admin`: everything.
    Admin,
    /// `os:operator`: reads plus reboot, service control, etcd maintenance.
    Operator,
    /// `os:reader`: reads that reveal no secrets.
    Reader,
    /// `os:etcd:backup`: etcd snapshots and status.
    EtcdBackup,
    /// `os:image:verifier`: image verification.
    ImageVerifier,
    /// `os:meta:writer`: META key writes.
    MetaWriter,
    /// `os:impersonator`: may assert another caller's roles via `talos-role`
    /// (apid forwarding to apid).
    Impersonator,
}

impl Role {
    /// Every built-in role.
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Operator,
        Role::Reader,
        Role::EtcdBackup,
        Role::ImageVerifier,
        Role::MetaWriter,
        Role::Impersonator,
    ];

    /// The role's name as it appears in certificates and metadata.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "os:admin",
            Role::Operator => "os:operator",
            Role::Reader => "os:reader",
            Role::EtcdBackup => "os:etcd:backup",
            Role::ImageVerifier => "os:image:verifier",
            Role::MetaWriter => "os:meta:writer",
            Role::Impersonator => "os:impersonator",
        }
    }

    /// Parses a role name; unknown names are `None` (they grant nothing).
    #[must_use]
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles, as held by one caller.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    /// No role at all.
    pub const EMPTY: RoleSet = RoleSet(0);

    /// A set from a slice of roles.
    #[must_use]
    pub const fn of(roles: &[Role]) -> RoleSet {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= roles[i].bit();
            i += 1;
        }
        RoleSet(bits)
    }

    /// The roles named by certificate Organization values or `talos-role`
    /// metadata. Empty and unknown names are ignored, as upstream does.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> RoleSet {
        let mut set = RoleSet::EMPTY;
        for name in names {
            if let Some(role) = Role::parse(name.trim()) {
                set.insert(role);
            }
        }
        set
    }

    /// Adds a role.
    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }

    /// Whether the set holds `role`.
    #[must_use]
    pub const fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the two sets share a role.
    #[must_use]
    pub const fn intersects(self, other: RoleSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles in the set, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The role names, for `talos-role` metadata.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        self.iter().map(Role::as_str)
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// Who may call one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The method's `:path`.
    pub path: &'static str,
    /// Any of these roles allows the call.
    pub roles: RoleSet,
    /// In maintenance mode (no machine config) every caller is `os:reader`,
    /// and these methods are allowed for it: they are how a node leaves
    /// maintenance.
    pub maintenance_reader: bool,
}

const A: RoleSet = RoleSet::of(&[Role::Admin]);
const AO: RoleSet = RoleSet::of(&[Role::Admin, Role::Operator]);
const ARO: RoleSet = RoleSet::of(&[Role::Admin, Role::Operator, Role::Reader]);
const AROE: RoleSet = RoleSet::of(&[Role::Admin, Role::Operator, Role::Reader, Role::EtcdBackup]);
const AOE: RoleSet = RoleSet::of(&[Role::Admin, Role::Operator, Role::EtcdBackup]);
const AM: RoleSet = RoleSet::of(&[Role::Admin, Role::MetaWriter]);

const fn rule(path: &'static str, roles: RoleSet) -> Rule {
    Rule {
        path,
        roles,
        maintenance_reader: false,
    }
}

const fn maintenance(path: &'static str) -> Rule {
    Rule {
        path,
        roles: A,
        maintenance_reader: true,
    }
}

/// The method → role table, sorted by path.
pub const RULES: &[Rule] = &[
    rule("/cluster.ClusterService/HealthCheck", ARO),
    // COSI: reads for every reader (sensitive types need os:admin, which
    // machined checks per type); writes are admin's and refused anyway.
    rule("/cosi.resource.State/Create", A),
    rule("/cosi.resource.State/Destroy", A),
    rule("/cosi.resource.State/Get", ARO),
    rule("/cosi.resource.State/List", ARO),
    rule("/cosi.resource.State/Update", A),
    rule("/cosi.resource.State/Watch", ARO),
    rule("/machine.LifecycleService/Install", A),
    rule("/machine.LifecycleService/Upgrade", A),
    maintenance("/machine.MachineService/ApplyConfiguration"),
    rule("/machine.MachineService/Bootstrap", A),
    rule("/machine.MachineService/CPUFreqStats", ARO),
    rule("/machine.MachineService/CPUInfo", ARO),
    rule("/machine.MachineService/Containers", ARO),
    rule("/machine.MachineService/Copy", A),
    rule("/machine.MachineService/DiskStats", ARO),
    rule("/machine.MachineService/DiskUsage", ARO),
    rule("/machine.MachineService/Dmesg", ARO),
    rule("/machine.MachineService/EtcdAlarmDisarm", AO),
    rule("/machine.MachineService/EtcdAlarmList", AROE),
    rule("/machine.MachineService/EtcdDefragment", AO),
    rule("/machine.MachineService/EtcdDowngradeCancel", A),
    rule("/machine.MachineService/EtcdDowngradeEnable", A),
    rule("/machine.MachineService/EtcdDowngradeValidate", A),
    rule("/machine.MachineService/EtcdForfeitLeadership", A),
    rule("/machine.MachineService/EtcdLeaveCluster", A),
    rule("/machine.MachineService/EtcdMemberList", AROE),
    rule("/machine.MachineService/EtcdRecover", A),
    rule("/machine.MachineService/EtcdRemoveMemberByID", A),
    rule("/machine.MachineService/EtcdSnapshot", AOE),
    rule("/machine.MachineService/EtcdStatus", AROE),
    rule("/machine.MachineService/Events", ARO),
    rule("/machine.MachineService/GenerateClientConfiguration", A),
    rule("/machine.MachineService/Hostname", ARO),
    rule("/machine.MachineService/ImageList", ARO),
    rule("/machine.MachineService/ImagePull", AO),
    rule("/machine.MachineService/Kubeconfig", A),
    rule("/machine.MachineService/List", ARO),
    rule("/machine.MachineService/LoadAvg", ARO),
    rule("/machine.MachineService/Logs", ARO),
    rule("/machine.MachineService/LogsContainers", ARO),
    rule("/machine.MachineService/Memory", ARO),
    rule("/machine.MachineService/MetaDelete", AM),
    rule("/machine.MachineService/MetaWrite", AM),
    rule("/machine.MachineService/Mounts", ARO),
    rule("/machine.MachineService/Netstat", ARO),
    rule("/machine.MachineService/NetworkDeviceStats", ARO),
    rule("/machine.MachineService/PacketCapture", AO),
    rule("/machine.MachineService/Processes", ARO),
    rule("/machine.MachineService/Read", A),
    rule("/machine.MachineService/Reboot", AO),
    rule("/machine.MachineService/Reset", A),
    rule("/machine.MachineService/Restart", AO),
    rule("/machine.MachineService/Rollback", A),
    rule("/machine.MachineService/ServiceList", ARO),
    rule("/machine.MachineService/ServiceRestart", AO),
    rule("/machine.MachineService/ServiceStart", AO),
    rule("/machine.MachineService/ServiceStop", AO),
    rule("/machine.MachineService/Shutdown", AO),
    rule("/machine.MachineService/Stats", ARO),
    rule("/machine.MachineService/SystemStat", ARO),
    rule("/machine.MachineService/Upgrade", A),
    rule("/machine.MachineService/Version", ARO),
    rule("/network.NetworkService/Interfaces", ARO),
    rule("/network.NetworkService/Routes", ARO),
    // trustd authenticates with the machine token, not roles; through apid
    // (which never routes it) only an admin could even try.
    rule("/securityapi.SecurityService/Certificate", A),
    maintenance("/storage.StorageService/BlockDeviceWipe"),
    rule("/storage.StorageService/Disks", ARO),
    rule("/time.TimeService/Time", ARO),
    rule("/time.TimeService/TimeCheck", ARO),
];

/// The rule for a method, if the table has one.
#[must_use]
pub fn rule_for(path: &str) -> Option<&'static Rule> {
    RULES
        .binary_search_by(|r| r.path.cmp(path))
        .ok()
        .map(|i| &RULES[i])
}

/// Whether a caller holding `roles` may call `path`.
///
/// `maintenance` is true while the node has no machine config; then the
/// methods marked [`Rule::maintenance_reader`] are open to `os:reader`.
/// A method missing from the table needs `os:admin`.
#[must_use]
pub fn is_allowed(path: &str, roles: RoleSet, maintenance: bool) -> bool {
    match rule_for(path) {
        Some(rule) => {
            roles.intersects(rule.roles)
                || (maintenance && rule.maintenance_reader && roles.contains(Role::Reader))
        }
        None => roles.contains(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::METHODS;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in RULES.windows(2) {
            assert!(
                pair[0].path < pair[1].path,
                "{} !< {}",
                pair[0].path,
                pair[1].path
            );
        }
    }

    #[test]
    fn every_method_of_every_contract_has_a_rule() {
        let missing: Vec<&str> = METHODS
            .iter()
            .map(|m| m.path)
            .filter(|p| rule_for(p).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "methods without a role rule: {missing:?}"
        );
    }

    #[test]
    fn every_rule_names_a_declared_method() {
        let stale: Vec<&str> = RULES
            .iter()
            .map(|r| r.path)
            .filter(|p| crate::methods::lookup(p).is_none())
            .collect();
        assert!(
            stale.is_empty(),
            "rules for methods no contract declares: {stale:?}"
        );
    }

    #[test]
    fn unknown_methods_need_admin() {
        let path = "/machine.MachineService/SomethingNew";
        assert!(rule_for(path).is_none());
        assert!(is_allowed(path, RoleSet::of(&[Role::Admin]), false));
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
            assert!(
                !is_allowed(path, RoleSet::of(&[role]), false),
                "{role} allowed"
            );
            assert!(
                !is_allowed(path, RoleSet::of(&[role]), true),
                "{role} allowed in maintenance"
            );
        }
        assert!(!is_allowed(
            "/cosi.resource.State/Create",
            RoleSet::of(&[Role::Operator]),
            false
        ));
    }

    #[test]
    fn upstream_examples() {
        let reader = RoleSet::of(&[Role::Reader]);
        let operator = RoleSet::of(&[Role::Operator]);
        let admin = RoleSet::of(&[Role::Admin]);
        // Read is admin only: files may hold secrets.
        assert!(!is_allowed("/machine.MachineService/Read", reader, false));
        assert!(!is_allowed("/machine.MachineService/Read", operator, false));
        assert!(is_allowed("/machine.MachineService/Read", admin, false));
        assert!(is_allowed("/machine.MachineService/Version", reader, false));
        assert!(is_allowed(
            "/machine.MachineService/Reboot",
            operator,
            false
        ));
        assert!(!is_allowed("/machine.MachineService/Reboot", reader, false));
        assert!(is_allowed(
            "/machine.MachineService/EtcdSnapshot",
            RoleSet::of(&[Role::EtcdBackup]),
            false
        ));
        assert!(is_allowed(
            "/machine.MachineService/MetaWrite",
            RoleSet::of(&[Role::MetaWriter]),
            false
        ));
        // ApplyConfiguration: admin, or reader in maintenance mode only.
        let apply = "/machine.MachineService/ApplyConfiguration";
        assert!(!is_allowed(apply, reader, false));
        assert!(is_allowed(apply, reader, true));
        assert!(is_allowed(apply, admin, false));
        assert!(!is_allowed(apply, operator, true));
        // Impersonator alone grants nothing.
        assert!(!is_allowed(
            "/machine.MachineService/Version",
            RoleSet::of(&[Role::Impersonator]),
            false
        ));
        assert!(!is_allowed(
            "/machine.MachineService/Version",
            RoleSet::EMPTY,
            false
        ));
    }

    #[test]
    fn role_names_round_trip_and_unknown_names_grant_nothing() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        let set = RoleSet::from_names(["os:reader", "", "os:superuser", " os:operator "]);
        assert_eq!(set, RoleSet::of(&[Role::Reader, Role::Operator]));
        assert_eq!(
            set.names().collect::<Vec<_>>(),
            ["os:operator", "os:reader"]
        );
        assert!(RoleSet::from_names(["admin", "os:Admin"]).is_empty());
    }
}
