//! What to answer to one question: from the zone's [`Names`], or "forward it upstream".
//!
//! Pure, so the DNS rules are tested without sockets:
//! - names in `internal` and PTR names of the mesh range are ours (authoritative answers);
//! - an existing name asked for another type is NODATA (NOERROR, no answer); a missing name is
//!   NXDOMAIN for every type (RFC 8020); both carry the zone's SOA in the authority section
//!   (RFC 2308), whose minimum is the negative TTL;
//! - `ANY` gets the A records only (RFC 8482's minimal answer);
//! - `AXFR`/`IXFR` are refused (the zone changes by the second and is no one's to copy),
//!   other opcodes than QUERY are not implemented, and classes other than IN are refused;
//! - every other name goes upstream.
//!
//! Header-level checks (one question, the EDNS version) happen in [`crate::server`], before
//! a question reaches here.

use std::net::Ipv4Addr;

use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use uncloud_common::address::MeshCidr;

use crate::names::{in_zone, Names, Resolution, ZONE};

/// A reply made here.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// What to do with one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// An authoritative reply from the zone (or a refusal).
    Local(Reply),
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// The settings answers depend on.
#[derive(Debug, Clone)]
pub struct Zone {
    /// TTL of every record served, and the negative TTL in the SOA.
    pub ttl: u32,
    /// The mesh range: PTR questions inside it are answered here.
    pub cidr: Option<MeshCidr>,
}

/// Decides the reply to `name`/`qtype`/`qclass` asked with `op_code` by `asker` (its IPv4
/// address if it has one: a container's address scopes bare service names to its project).
pub fn decide(
    names: &Names,
    zone: &Zone,
    op_code: OpCode,
    name: &Name,
    qtype: RecordType,
    qclass: DNSClass,
    asker: Option<Ipv4Addr>,
) -> Decision {
    if op_code != OpCode::Query {
        return refusal(ResponseCode::NotImp);
    }
    let ascii = name.to_ascii();
    let reverse = reverse_ip(name).filter(|ip| zone.cidr.as_ref().is_some_and(|c| c.contains(*ip)));
    let ours = in_zone(&ascii) || reverse.is_some();
    if !ours {
        return Decision::Forward;
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) || qclass != DNSClass::IN {
        return refusal(ResponseCode::Refused);
    }
    if let Some(ip) = reverse {
        let soa = soa(
            &reverse_zone(zone.cidr.as_ref().expect("checked above")),
            zone.ttl,
        );
        return Decision::Local(match names.reverse(ip) {
            Some(target) => {
                let answers = match qtype {
                    RecordType::PTR | RecordType::ANY => {
                        let target = Name::from_ascii(format!("{target}.")).unwrap_or_default();
                        vec![Record::from_rdata(
                            name.clone(),
                            zone.ttl,
                            RData::PTR(PTR(target)),
                        )]
                    }
                    _ => Vec::new(),
                };
                let authorities = if answers.is_empty() {
                    vec![soa]
                } else {
                    Vec::new()
                };
                Reply {
                    rcode: ResponseCode::NoError,
                    answers,
                    authorities,
                }
            }
            None => negative(ResponseCode::NXDomain, soa),
        });
    }
    let apex = soa(&zone_name(), zone.ttl);
    Decision::Local(match names.resolve(&ascii, asker) {
        Resolution::Missing => negative(ResponseCode::NXDomain, apex),
        Resolution::Exists if qtype == RecordType::SOA && relative_is_apex(&ascii) => Reply {
            rcode: ResponseCode::NoError,
            answers: vec![apex],
            authorities: Vec::new(),
        },
        Resolution::Exists => negative(ResponseCode::NoError, apex),
        Resolution::Addresses(mut ips) => match qtype {
            RecordType::A | RecordType::ANY if !ips.is_empty() => {
                // Clients mostly take the first address: spread them.
                ips.shuffle(&mut rand::rng());
                Reply {
                    rcode: ResponseCode::NoError,
                    answers: ips
                        .into_iter()
                        .map(|ip| Record::from_rdata(name.clone(), zone.ttl, RData::A(A(ip))))
                        .collect(),
                    authorities: Vec::new(),
                }
            }
            _ => negative(ResponseCode::NoError, apex),
        },
    })
}

fn refusal(rcode: ResponseCode) -> Decision {
    Decision::Local(Reply {
        rcode,
        answers: Vec::new(),
        authorities: Vec::new(),
    })
}

fn negative(rcode: ResponseCode, soa: Record) -> Reply {
    Reply {
        rcode,
        answers: Vec::new(),
        authorities: vec![soa],
    }
}

fn relative_is_apex(ascii: &str) -> bool {
    ascii.trim_end_matches('.').eq_ignore_ascii_case(ZONE)
}

fn zone_name() -> Name {
    Name::from_ascii(format!("{ZONE}.")).expect("a valid name")
}

/// The SOA of `apex`: its minimum (the negative TTL) is the records' TTL, so a name that
/// appears is not hidden by a cached NXDOMAIN for longer than a record would be.
fn soa(apex: &Name, ttl: u32) -> Record {
    let mname = Name::from_ascii(format!("ns.{ZONE}.")).expect("a valid name");
    let rname = Name::from_ascii(format!("hostmaster.{ZONE}.")).expect("a valid name");
    Record::from_rdata(
        apex.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, ttl)),
    )
}

/// The IPv4 address of an `in-addr.arpa` name with all four octets, if it is one.
fn reverse_ip(name: &Name) -> Option<Ipv4Addr> {
    let ascii = name.to_ascii().to_ascii_lowercase();
    let rest = ascii.trim_end_matches('.').strip_suffix(".in-addr.arpa")?;
    let octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()?;
    match octets.as_slice() {
        [d, c, b, a] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// The reverse zone of the mesh range, on an octet boundary (`210.10.in-addr.arpa.` for
/// `10.210.0.0/16`).
fn reverse_zone(cidr: &MeshCidr) -> Name {
    let octets = cidr.network().octets();
    let whole = usize::from(cidr.prefix() / 8);
    let mut labels: Vec<String> = octets[..whole].iter().rev().map(u8::to_string).collect();
    labels.push("in-addr.arpa.".into());
    Name::from_ascii(labels.join(".")).expect("a valid name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::fixtures::{container, machine, service, view};

    fn names() -> Names {
        let mut v = view();
        v.add_machine(machine("m1", "one", 1));
        v.add_service(service("p/web", "p", "web", 0));
        v.add_container(container("w1", "m1", "p/web", "10.210.1.2"));
        v.add_container(container("w2", "m1", "p/web", "10.210.1.3"));
        Names::build(&v)
    }

    fn zone() -> Zone {
        Zone {
            ttl: 5,
            cidr: Some("10.210.0.0/16".parse().unwrap()),
        }
    }

    fn ask(name: &str, qtype: RecordType) -> Decision {
        decide(
            &names(),
            &zone(),
            OpCode::Query,
            &Name::from_ascii(name).unwrap(),
            qtype,
            DNSClass::IN,
            None,
        )
    }

    fn local(d: Decision) -> Reply {
        match d {
            Decision::Local(r) => r,
            Decision::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn a_service_answers_all_its_addresses_in_varying_order() {
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let r = local(ask("web.p.internal.", RecordType::A));
            assert_eq!(r.rcode, ResponseCode::NoError);
            assert_eq!(r.answers.len(), 2);
            assert!(r.authorities.is_empty());
            firsts.insert(r.answers[0].data.clone());
        }
        assert_eq!(firsts.len(), 2, "the order is shuffled per answer");
    }

    #[test]
    fn nodata_for_other_types_and_nxdomain_for_every_type_of_a_missing_name() {
        let r = local(ask("web.p.internal.", RecordType::AAAA));
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
        ] {
            let r = local(ask("nope.internal.", t));
            assert_eq!(r.rcode, ResponseCode::NXDomain, "{t}");
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        }
        // Empty non-terminals exist (RFC 8020): NODATA, not NXDOMAIN.
        let r = local(ask("machine.internal.", RecordType::A));
        assert_eq!(r.rcode, ResponseCode::NoError);
        let r = local(ask("internal.", RecordType::SOA));
        assert_eq!(r.answers[0].record_type(), RecordType::SOA);
        let r = local(ask("web.p.internal.", RecordType::ANY));
        assert_eq!(r.answers.len(), 2, "ANY: the A records");
    }

    #[test]
    fn pointers_for_mesh_addresses_the_rest_goes_upstream() {
        let r = local(ask("1.1.210.10.in-addr.arpa.", RecordType::PTR));
        assert_eq!(
            &r.answers[0].data,
            &RData::PTR(PTR(Name::from_ascii("one.machine.internal.").unwrap()))
        );
        let r = local(ask("9.9.210.10.in-addr.arpa.", RecordType::PTR));
        assert_eq!(r.rcode, ResponseCode::NXDomain);
        assert_eq!(
            &r.authorities[0].name,
            &Name::from_ascii("210.10.in-addr.arpa.").unwrap()
        );
        assert_eq!(
            ask("1.0.0.127.in-addr.arpa.", RecordType::PTR),
            Decision::Forward
        );
        assert_eq!(ask("example.com.", RecordType::A), Decision::Forward);
        assert_eq!(
            ask("internal.example.com.", RecordType::A),
            Decision::Forward
        );
    }

    #[test]
    fn zone_transfers_other_classes_and_opcodes_are_refused() {
        let r = local(ask("internal.", RecordType::AXFR));
        assert_eq!(r.rcode, ResponseCode::Refused);
        let d = decide(
            &names(),
            &zone(),
            OpCode::Update,
            &Name::from_ascii("internal.").unwrap(),
            RecordType::SOA,
            DNSClass::IN,
            None,
        );
        assert_eq!(local(d).rcode, ResponseCode::NotImp);
        let d = decide(
            &names(),
            &zone(),
            OpCode::Query,
            &Name::from_ascii("one.machine.internal.").unwrap(),
            RecordType::A,
            DNSClass::CH,
            None,
        );
        assert_eq!(local(d).rcode, ResponseCode::Refused);
    }
}
