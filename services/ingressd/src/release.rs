//! Letting go of draining containers: which ones this ingress machine no longer needs.
//!
//! A container about to be removed is marked draining by the machine that runs it; the
//! routes leave it out at once ([`crate::routes`]), and once no request to it is in flight
//! either, this machine lists it in its `ingress_released` (in the state). The machine that
//! runs it removes it when every ingress machine it reaches has listed it, so requests
//! already on their way finish. Pure: the in-flight check is passed in.

use std::net::IpAddr;

use crate::view::View;

/// The draining containers with no request in flight from this machine, sorted.
pub fn released(view: &View, busy: impl Fn(IpAddr) -> bool) -> Vec<String> {
    let mut out: Vec<String> = view
        .containers
        .values()
        .filter(|c| c.draining)
        .filter(|c| c.ip.parse::<IpAddr>().map_or(true, |ip| !busy(ip)))
        .map(|c| c.id.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::Container;

    #[test]
    fn a_draining_container_is_released_once_nothing_is_in_flight_to_it() {
        let mut v = View::default();
        for (id, ip, draining) in [
            ("a", "10.210.1.2", true),
            ("b", "10.210.1.3", true),
            ("c", "10.210.1.4", false),
        ] {
            v.containers.insert(
                id.into(),
                Container {
                    id: id.into(),
                    ip: ip.into(),
                    draining,
                    ..Default::default()
                },
            );
        }
        let busy_b = |ip: IpAddr| ip.to_string() == "10.210.1.3";
        assert_eq!(released(&v, busy_b), ["a"]);
        assert_eq!(released(&v, |_| false), ["a", "b"]);
    }
}
