//! The names of the `internal` zone, built from one machine's view of the state.
//!
//! Pure: [`Names::build`] takes a [`View`] (machines, services, containers, and how this
//! machine sees the others) and [`Names::resolve`] answers one name for one asker. Nothing here
//! does I/O, so every rule is tested without sockets.
//!
//! The names:
//! - `<machine>.machine.internal`: the machine's mesh address;
//! - `<container>.<machine>.machine.internal`: a running container's address;
//! - `<service>.<project>.internal`: the addresses of the service's containers that are
//!   running, healthy and on a machine this machine sees reachable;
//! - `<service>.internal`: the same, for the asker's project first (see [`Names::resolve`]);
//! - `lb.<service>.<project>.internal` and `lb.<service>.internal`: the service's virtual
//!   address ([`uncloud_common::vips`]), which every machine balances across the same
//!   containers the service's name answers ([`Names::balanced`], programmed by `crate::vip`).
//!
//! `machine` and `lb` are reserved labels (stated refuses them as service or project names; a
//! project called `machine` that a peer wrote anyway never shadows the machines).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use uncloud_common::address::MeshCidr;
use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Container, ContainerState, Machine, Service, RESERVED_LABELS};
use uncloud_common::vips;

/// The zone dnsd is authoritative for.
pub const ZONE: &str = "internal";
/// The label under which machines (and their containers) are named.
pub const MACHINE_LABEL: &str = "machine";
/// The label of the services' virtual addresses.
pub const LB_LABEL: &str = "lb";

/// What one machine knows: the state's entities and the liveness of the other machines.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This machine's id; it always counts as reachable.
    pub me: String,
    /// The mesh range (`10.210.0.0/16`), which gives the machines' addresses.
    pub cidr: Option<MeshCidr>,
    /// By machine id.
    pub machines: BTreeMap<String, MachineEntry>,
    /// By service id.
    pub services: BTreeMap<String, ServiceEntry>,
    /// By container id.
    pub containers: BTreeMap<String, ContainerEntry>,
    /// Machine id -> how this machine sees it; a machine missing here counts as down.
    pub liveness: HashMap<String, Liveness>,
}

/// What names need of a machine (the state's entry is mostly keys, endpoints and a
/// certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEntry {
    pub name: String,
    pub subnet: u32,
}

/// What names need of a service (its spec and history are most of its size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub project: String,
    pub created_at_ms: u64,
    /// The virtual address index it claims (0: none).
    pub vip: u32,
}

/// What names need of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    pub machine_id: String,
    pub name: String,
    pub service_id: String,
    pub ip: Option<Ipv4Addr>,
    pub running: bool,
    pub healthy: bool,
}

impl From<Machine> for MachineEntry {
    fn from(m: Machine) -> Self {
        MachineEntry {
            name: m.name,
            subnet: m.subnet,
        }
    }
}

impl From<Service> for ServiceEntry {
    fn from(s: Service) -> Self {
        ServiceEntry {
            name: s.name,
            project: s.project,
            created_at_ms: s.created_at_ms,
            vip: s.vip,
        }
    }
}

impl From<Container> for ContainerEntry {
    fn from(c: Container) -> Self {
        ContainerEntry {
            ip: c.ip.parse().ok(),
            running: c.state == ContainerState::Running,
            // A draining container is about to go: new connections go elsewhere.
            healthy: c.healthy && !c.draining,
            machine_id: c.machine_id,
            name: c.name,
            service_id: c.service_id,
        }
    }
}

impl View {
    pub fn add_machine(&mut self, m: Machine) {
        self.machines.insert(m.id.clone(), m.into());
    }

    pub fn add_service(&mut self, s: Service) {
        self.services.insert(s.id.clone(), s.into());
    }

    pub fn add_container(&mut self, c: Container) {
        self.containers.insert(c.id.clone(), c.into());
    }

    fn reachable(&self, machine_id: &str) -> bool {
        machine_id == self.me
            || self
                .liveness
                .get(machine_id)
                .is_some_and(|l| l.is_reachable())
    }
}

/// The answer to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name's addresses right now (possibly none: the name exists, nothing answers).
    Addresses(Vec<Ipv4Addr>),
    /// The zone itself or a name that only has names below it (`machine.internal`).
    Exists,
    /// No such name in the zone.
    Missing,
}

/// A service's name within one project.
#[derive(Debug, Clone)]
struct ServiceName {
    project: Arc<str>,
    addresses: Box<[Ipv4Addr]>,
    /// Its virtual address (none once all are taken).
    vip: Option<Ipv4Addr>,
}

/// What a reverse (PTR) lookup of an address finds.
#[derive(Debug, Clone)]
enum Reverse {
    /// A machine or a container: its host name (a key of [`Names::hosts`]).
    Host(Arc<str>),
    /// A virtual address: `lb.<service>[.<project>]`.
    Lb {
        service: Arc<str>,
        project: Arc<str>,
    },
}

/// Every name of the zone, lowercased, without the trailing `.internal`.
///
/// Rebuilt whole on every change, so it is kept small: a label that many names share (a
/// project, a machine) is one `Arc<str>`, a host name is stored once for its address and its
/// reverse, and a reverse name is put together when asked for.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// `<machine>.machine` and `<container>.<machine>.machine` -> address(es).
    hosts: HashMap<Arc<str>, Vec<Ipv4Addr>>,
    /// `<service>` -> its instances, one per project, oldest first (by creation time, then
    /// id).
    services: HashMap<Arc<str>, Vec<ServiceName>>,
    /// Names that exist only as parents of others (`machine`, `<project>`).
    parents: HashSet<Arc<str>>,
    /// Address -> what has it, for PTR.
    reverse: HashMap<Ipv4Addr, Reverse>,
    /// A container's address -> its project, to scope bare service names by who asks.
    project_of: HashMap<Ipv4Addr, Arc<str>>,
    /// Virtual address -> the addresses it balances over, by address.
    balanced: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

/// One `Arc<str>` per distinct label during a build.
#[derive(Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

impl Names {
    /// Builds every name from `view`.
    pub fn build(view: &View) -> Names {
        let mut names = Names::default();
        let mut labels = Interner::default();
        names.parents.insert(labels.get(MACHINE_LABEL));
        let machine_name: HashMap<&str, Arc<str>> = view
            .machines
            .iter()
            .map(|(id, m)| (id.as_str(), labels.get(&m.name.to_ascii_lowercase())))
            .collect();
        for (id, m) in &view.machines {
            let Some(ip) = view.cidr.as_ref().and_then(|c| c.machine_ip(m.subnet)) else {
                continue;
            };
            let host: Arc<str> =
                Arc::from(format!("{}.{MACHINE_LABEL}", machine_name[id.as_str()]));
            names.reverse.insert(ip, Reverse::Host(host.clone()));
            names.hosts.insert(host, vec![ip]);
        }
        let mut service_addresses: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
        for c in view.containers.values() {
            let Some(ip) = c.ip else {
                continue;
            };
            let Some(machine) = machine_name.get(c.machine_id.as_str()) else {
                continue;
            };
            let service = view
                .services
                .get_key_value(c.service_id.as_str())
                .map(|(id, s)| (id.as_str(), s));
            if let Some((_, s)) = service {
                let project = labels.get(&s.project.to_ascii_lowercase());
                names.project_of.insert(ip, project);
            }
            let running = c.running;
            let reachable = view.reachable(&c.machine_id);
            let host = format!("{}.{machine}.{MACHINE_LABEL}", c.name.to_ascii_lowercase());
            let host = match names.hosts.get_key_value(host.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(host),
            };
            if running && reachable {
                names
                    .reverse
                    .entry(ip)
                    .or_insert_with(|| Reverse::Host(host.clone()));
            }
            let addrs = names.hosts.entry(host).or_default();
            if running && reachable {
                addrs.push(ip);
            }
            if let Some((id, _)) = service {
                let entry = service_addresses.entry(id).or_default();
                if running && reachable && c.healthy {
                    entry.push(ip);
                }
            }
        }
        // stated refuses these; a peer's entry that has one anyway gets no names.
        let reserved = |s: &ServiceEntry| {
            RESERVED_LABELS
                .iter()
                .any(|r| s.project.eq_ignore_ascii_case(r) || s.name.eq_ignore_ascii_case(r))
        };
        let vip_index = vips::resolve(view.services.iter().filter(|(_, s)| !reserved(s)).map(
            |(id, s)| vips::Claim {
                id,
                created_at_ms: s.created_at_ms,
                index: s.vip,
            },
        ));
        // Oldest first, so each name's instances come out in that order.
        let mut oldest_first: Vec<(&String, &ServiceEntry)> =
            view.services.iter().filter(|(_, s)| !reserved(s)).collect();
        oldest_first.sort_by(|a, b| (a.1.created_at_ms, a.0).cmp(&(b.1.created_at_ms, b.0)));
        for (id, s) in oldest_first {
            let project = labels.get(&s.project.to_ascii_lowercase());
            let mut addresses = service_addresses.remove(id.as_str()).unwrap_or_default();
            addresses.sort();
            let name = s.name.to_ascii_lowercase();
            let name = match names.services.get_key_value(name.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(name),
            };
            let vip = vip_index
                .get(id)
                .zip(view.cidr.as_ref())
                .and_then(|(&i, cidr)| vips::address(cidr, i));
            if let Some(vip) = vip {
                names.reverse.insert(
                    vip,
                    Reverse::Lb {
                        service: name.clone(),
                        project: project.clone(),
                    },
                );
                names.balanced.insert(vip, addresses.clone());
            }
            if !project.is_empty() {
                names.parents.insert(project.clone());
            }
            names.services.entry(name).or_default().push(ServiceName {
                project,
                addresses: addresses.into_boxed_slice(),
                vip,
            });
        }
        if !names.balanced.is_empty() {
            names.parents.insert(labels.get(LB_LABEL));
        }
        names
    }

    /// Resolves `name` (any case, with or without the trailing dot) for a query from `asker`.
    ///
    /// `<service>.internal` is ambiguous when several projects have a service of that name:
    /// the asker's own project wins (a container of project P asking for `db` through the
    /// search domain gets P's `db`); then the service without a project; then the oldest
    /// service (by creation time, then id), so every machine picks the same one.
    pub fn resolve(&self, name: &str, asker: Option<Ipv4Addr>) -> Resolution {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(rel) = relative(&lower) else {
            return Resolution::Missing;
        };
        if rel.is_empty() {
            return Resolution::Exists;
        }
        if let Some(addrs) = self.hosts.get(rel) {
            return Resolution::Addresses(addrs.clone());
        }
        let labels: Vec<&str> = rel.split('.').collect();
        let vip = |i: &ServiceName| Resolution::Addresses(i.vip.into_iter().collect());
        match labels.as_slice() {
            [LB_LABEL, service] => match self.pick(service, asker) {
                Some(i) => vip(i),
                None => Resolution::Missing,
            },
            [LB_LABEL, service, project] => match self.instance(service, project) {
                Some(i) => vip(i),
                None => Resolution::Missing,
            },
            [service] => match self.pick(service, asker) {
                Some(i) => Resolution::Addresses(i.addresses.to_vec()),
                None if self.parents.contains(*service) => Resolution::Exists,
                None => Resolution::Missing,
            },
            [service, project] if *project != MACHINE_LABEL => {
                match self.instance(service, project) {
                    Some(i) => Resolution::Addresses(i.addresses.to_vec()),
                    None => Resolution::Missing,
                }
            }
            // `<machine>.machine` without an entry, or deeper names under `machine`.
            _ => {
                let under_machine = labels.last() == Some(&MACHINE_LABEL);
                let is_parent_of_host =
                    under_machine && self.hosts.keys().any(|h| h.ends_with(&format!(".{rel}")));
                if is_parent_of_host {
                    Resolution::Exists
                } else {
                    Resolution::Missing
                }
            }
        }
    }

    /// The instance of `service` a bare name means for `asker` (see [`Names::resolve`]).
    fn pick(&self, service: &str, asker: Option<Ipv4Addr>) -> Option<&ServiceName> {
        let instances = self.services.get(service)?;
        let project = asker.and_then(|ip| self.project_of.get(&ip));
        project
            .and_then(|p| instances.iter().find(|i| &i.project == p))
            .or_else(|| instances.iter().find(|i| i.project.is_empty()))
            .or_else(|| instances.first())
    }

    /// `service` of `project`.
    fn instance(&self, service: &str, project: &str) -> Option<&ServiceName> {
        self.services
            .get(service)?
            .iter()
            .find(|i| &*i.project == project)
    }

    /// Every virtual address with the addresses it balances over right now (running, healthy
    /// containers on reachable machines; possibly none), ordered by virtual address.
    pub fn balanced(&self) -> &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
        &self.balanced
    }

    /// The name of a mesh, container or virtual address, for PTR.
    pub fn reverse(&self, ip: Ipv4Addr) -> Option<String> {
        Some(match self.reverse.get(&ip)? {
            Reverse::Host(host) => format!("{host}.{ZONE}"),
            Reverse::Lb { service, project } => lb_name(service, project),
        })
    }

    /// Calls `f` with every host name and every `<service>.<project>` (and its `lb.` name),
    /// given as the parts of the name below the zone (each one or more labels), and their
    /// addresses.
    fn visit_qualified(&self, f: &mut impl FnMut(&[&str], &[Ipv4Addr])) {
        for (host, addrs) in &self.hosts {
            f(&[host], addrs);
        }
        for (name, instances) in &self.services {
            for i in instances.iter().filter(|i| !i.project.is_empty()) {
                f(&[name, &i.project], &i.addresses);
                if let Some(vip) = i.vip {
                    f(&[LB_LABEL, name, &i.project], &[vip]);
                }
            }
        }
    }

    /// Calls `f` (as [`Names::visit_qualified`] does) with the names whose answer is the same
    /// whoever asks: every host name, every `<service>.<project>`, and `<service>` where one
    /// project has it. Nothing is allocated: the fast path's table is built from this.
    pub fn visit_asker_independent(&self, mut f: impl FnMut(&[&str], &[Ipv4Addr])) {
        self.visit_qualified(&mut f);
        for (name, instances) in &self.services {
            if let [only] = instances.as_slice() {
                f(&[name], &only.addresses);
                if let Some(vip) = only.vip {
                    f(&[LB_LABEL, name], &[vip]);
                }
            }
        }
    }

    /// Every name with its addresses right now, sorted: what `org.uncloud.Dns1` lists (a bare
    /// service name as the machine itself gets it).
    pub fn list(&self) -> Vec<(String, Vec<Ipv4Addr>)> {
        let mut out = Vec::new();
        let mut push = |parts: &[&str], ips: &[Ipv4Addr]| {
            out.push((format!("{}.{ZONE}", parts.join(".")), ips.to_vec()))
        };
        self.visit_qualified(&mut push);
        for (name, instances) in &self.services {
            if let Some(first) = instances
                .iter()
                .find(|i| i.project.is_empty())
                .or_else(|| instances.first())
            {
                push(&[name], &first.addresses);
                if let Some(vip) = first.vip {
                    push(&[LB_LABEL, name], &[vip]);
                }
            }
        }
        out.sort();
        out
    }
}

/// `lb.<service>.<project>.internal`, or `lb.<service>.internal` without a project.
fn lb_name(service: &str, project: &str) -> String {
    match project {
        "" => format!("{LB_LABEL}.{service}.{ZONE}"),
        p => format!("{LB_LABEL}.{service}.{p}.{ZONE}"),
    }
}

/// `name` relative to the zone (`db.web` for `db.web.internal`), `""` for the zone itself,
/// `None` outside it.
fn relative(lower: &str) -> Option<&str> {
    if lower == ZONE {
        return Some("");
    }
    lower.strip_suffix(ZONE)?.strip_suffix('.')
}

/// Whether `name` (lowercase or not) is in the zone.
pub fn in_zone(name: &str) -> bool {
    relative(&name.trim_end_matches('.').to_ascii_lowercase()).is_some()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Entities for the tests of this crate's pure modules.

    use uncloud_common::model::{Container, ContainerState, Machine, Service};

    pub(crate) fn machine(id: &str, name: &str, subnet: u32) -> Machine {
        Machine {
            id: id.into(),
            name: name.into(),
            subnet,
            ..Default::default()
        }
    }

    pub(crate) fn service(id: &str, project: &str, name: &str, created: u64) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            project: project.into(),
            created_at_ms: created,
            ..Default::default()
        }
    }

    pub(crate) fn container(id: &str, machine: &str, service: &str, ip: &str) -> Container {
        Container {
            id: id.into(),
            machine_id: machine.into(),
            name: id.into(),
            service_id: service.into(),
            ip: ip.into(),
            state: ContainerState::Running,
            healthy: true,
            ..Default::default()
        }
    }

    /// A view from machine `m1` of the mesh `10.210.0.0/16`.
    pub(crate) fn view() -> super::View {
        super::View {
            me: "m1".into(),
            cidr: Some("10.210.0.0/16".parse().unwrap()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{container, machine, service};
    use super::*;

    fn view() -> View {
        let mut v = View {
            me: "m1".into(),
            cidr: Some("10.210.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        for m in [machine("m1", "one", 1), machine("m2", "Two", 2)] {
            v.add_machine(m);
        }
        v.liveness.insert("m2".into(), Liveness::Alive);
        for s in [
            service("shop/db", "shop", "db", 10),
            service("blog/db", "blog", "db", 5),
            service("shop/web", "shop", "web", 10),
        ] {
            v.add_service(s);
        }
        for c in [
            container("shop-db-1", "m1", "shop/db", "10.210.1.2"),
            container("blog-db-1", "m2", "blog/db", "10.210.2.2"),
            container("shop-web-1", "m1", "shop/web", "10.210.1.3"),
            container("shop-web-2", "m2", "shop/web", "10.210.2.3"),
        ] {
            v.add_container(c);
        }
        v
    }

    fn ips(list: &[&str]) -> Resolution {
        Resolution::Addresses(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn machines_and_their_containers_have_names_in_any_case() {
        let n = Names::build(&view());
        assert_eq!(
            n.resolve("one.machine.internal.", None),
            ips(&["10.210.1.1"])
        );
        assert_eq!(
            n.resolve("TWO.Machine.Internal", None),
            ips(&["10.210.2.1"])
        );
        assert_eq!(
            n.resolve("shop-web-2.two.machine.internal", None),
            ips(&["10.210.2.3"])
        );
        assert_eq!(
            n.resolve("three.machine.internal", None),
            Resolution::Missing
        );
        assert_eq!(n.resolve("machine.internal", None), Resolution::Exists);
        assert_eq!(n.resolve("internal", None), Resolution::Exists);
        assert_eq!(n.resolve("example.com", None), Resolution::Missing);
        assert_eq!(
            n.reverse("10.210.2.1".parse().unwrap()).as_deref(),
            Some("two.machine.internal")
        );
        assert_eq!(
            n.reverse("10.210.1.3".parse().unwrap()).as_deref(),
            Some("shop-web-1.one.machine.internal")
        );
    }

    #[test]
    fn a_bare_service_name_is_the_askers_project_first_then_the_oldest() {
        let n = Names::build(&view());
        let shop_web: Ipv4Addr = "10.210.1.3".parse().unwrap();
        let blog_db: Ipv4Addr = "10.210.2.2".parse().unwrap();
        assert_eq!(
            n.resolve("db.internal", Some(shop_web)),
            ips(&["10.210.1.2"])
        );
        assert_eq!(
            n.resolve("db.internal", Some(blog_db)),
            ips(&["10.210.2.2"])
        );
        // Not a container (the machine itself): the oldest `db`, blog's.
        assert_eq!(n.resolve("db.internal", None), ips(&["10.210.2.2"]));
        assert_eq!(n.resolve("db.shop.internal", None), ips(&["10.210.1.2"]));
        assert_eq!(
            n.resolve("web.shop.internal", None),
            ips(&["10.210.1.3", "10.210.2.3"])
        );
        assert_eq!(n.resolve("web.blog.internal", None), Resolution::Missing);
        assert_eq!(n.resolve("shop.internal", None), Resolution::Exists);
    }

    #[test]
    fn lb_names_are_the_virtual_addresses_scoped_like_service_names() {
        let mut v = view();
        // blog/db (oldest) claims 1 and shop/web 2; shop/db was written without a claim.
        v.services.get_mut("blog/db").unwrap().vip = 1;
        v.services.get_mut("shop/web").unwrap().vip = 2;
        let n = Names::build(&v);
        let shop_web: Ipv4Addr = "10.210.1.3".parse().unwrap();
        assert_eq!(n.resolve("lb.db.shop.internal", None), ips(&["10.210.0.3"]));
        assert_eq!(n.resolve("lb.db.blog.internal", None), ips(&["10.210.0.1"]));
        assert_eq!(
            n.resolve("LB.DB.internal", Some(shop_web)),
            ips(&["10.210.0.3"])
        );
        assert_eq!(n.resolve("lb.db.internal", None), ips(&["10.210.0.1"]));
        assert_eq!(n.resolve("lb.web.internal", None), ips(&["10.210.0.2"]));
        assert_eq!(n.resolve("lb.nope.internal", None), Resolution::Missing);
        assert_eq!(n.resolve("lb.web.blog.internal", None), Resolution::Missing);
        assert_eq!(n.resolve("lb.internal", None), Resolution::Exists);
        assert_eq!(
            n.reverse("10.210.0.2".parse().unwrap()).as_deref(),
            Some("lb.web.shop.internal")
        );
        // Each balances over what its service's name answers.
        assert_eq!(
            n.balanced()[&"10.210.0.2".parse::<Ipv4Addr>().unwrap()],
            [
                "10.210.1.3".parse::<Ipv4Addr>().unwrap(),
                "10.210.2.3".parse().unwrap()
            ]
        );
        v.liveness.insert("m2".into(), Liveness::Down);
        let n = Names::build(&v);
        assert_eq!(
            n.balanced()[&"10.210.0.2".parse::<Ipv4Addr>().unwrap()],
            ["10.210.1.3".parse::<Ipv4Addr>().unwrap()]
        );
        // A service named `lb` gets no names at all.
        v.add_service(service("shop/lb", "shop", "lb", 1));
        let n = Names::build(&v);
        assert_eq!(n.resolve("lb.shop.internal", None), Resolution::Missing);
        assert_eq!(n.balanced().len(), 3);
    }

    #[test]
    fn only_running_healthy_containers_on_reachable_machines_answer() {
        let mut v = view();
        v.containers.get_mut("shop-web-1").unwrap().healthy = false;
        let n = Names::build(&v);
        assert_eq!(n.resolve("web.shop.internal", None), ips(&["10.210.2.3"]));
        // An unhealthy container keeps its own name.
        assert_eq!(
            n.resolve("shop-web-1.one.machine.internal", None),
            ips(&["10.210.1.3"])
        );

        v.liveness.insert("m2".into(), Liveness::Down);
        let n = Names::build(&v);
        assert_eq!(n.resolve("web.shop.internal", None), ips(&[]));
        assert_eq!(n.resolve("shop-web-2.two.machine.internal", None), ips(&[]));
        // The machine itself keeps its name: its address is known even while it is down.
        assert_eq!(
            n.resolve("two.machine.internal", None),
            ips(&["10.210.2.1"])
        );

        v.liveness.insert("m2".into(), Liveness::Suspect);
        v.containers.get_mut("shop-web-2").unwrap().running = false;
        let n = Names::build(&v);
        assert_eq!(n.resolve("web.shop.internal", None), ips(&[]));
    }

    #[test]
    fn a_draining_container_leaves_its_service_but_keeps_its_own_name() {
        let c = uncloud_common::model::Container {
            id: "c1".into(),
            machine_id: "m1".into(),
            name: "web-1".into(),
            ip: "10.210.1.3".into(),
            state: uncloud_common::model::ContainerState::Running,
            healthy: true,
            draining: true,
            ..Default::default()
        };
        let entry = ContainerEntry::from(c);
        assert!(entry.running && !entry.healthy, "{entry:?}");
    }

    #[test]
    fn a_project_named_machine_never_shadows_the_machines() {
        let mut v = view();
        let s = service("machine/one", "machine", "one", 1);
        v.add_service(s);
        let n = Names::build(&v);
        assert_eq!(
            n.resolve("one.machine.internal", None),
            ips(&["10.210.1.1"])
        );
    }

    #[test]
    fn the_list_names_every_host_and_service() {
        let n = Names::build(&view());
        let names: Vec<String> = n.list().into_iter().map(|(k, _)| k).collect();
        for want in [
            "one.machine.internal",
            "shop-db-1.one.machine.internal",
            "db.shop.internal",
            "db.blog.internal",
            "db.internal",
            "web.internal",
            "lb.web.shop.internal",
            "lb.web.internal",
        ] {
            assert!(names.contains(&want.to_string()), "{want} in {names:?}");
        }
    }
}
