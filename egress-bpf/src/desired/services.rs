//! The Services map's codec: a frontend and its backends as `tg_services`
//! holds them (ports in network byte order, at most `abi::SVC_BACKENDS`).

use super::{Backends, Frontend};
use crate::abi;

pub fn service_key(frontend: &Frontend) -> abi::ServiceKey {
    let (family, addr) = abi::addr_bytes(frontend.ip);
    abi::ServiceKey {
        family,
        protocol: frontend.protocol,
        port: frontend.port.to_be(),
        addr,
    }
}

/// Backends beyond `abi::SVC_BACKENDS` are left out: `compile` never
/// produces more, the codec only keeps the map value well-formed.
pub fn encode_backends(backends: &Backends) -> abi::ServiceValue {
    let mut value = abi::ServiceValue::default();
    for (slot, (ip, port)) in backends.iter().take(abi::SVC_BACKENDS).enumerate() {
        let (_, addr) = abi::addr_bytes(*ip);
        value.backends[slot] = abi::Backend {
            addr,
            port: port.to_be(),
            pad: 0,
        };
        value.count = slot as u32 + 1;
    }
    value
}

/// The backends of a map value read back; `family` is the frontend's (a
/// Service's backends are of its address family).
pub fn decode_backends(family: u8, value: &abi::ServiceValue) -> Backends {
    value
        .backends
        .iter()
        .take((value.count as usize).min(abi::SVC_BACKENDS))
        .filter_map(|b| Some((abi::addr_from_bytes(family, &b.addr)?, u16::from_be(b.port))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn backends_survive_the_map_and_the_excess_is_left_out() {
        let many: Backends = (0..abi::SVC_BACKENDS as u16 + 3)
            .map(|i| (IpAddr::from([10, 0, (i >> 8) as u8, i as u8]), 8000 + i))
            .collect();
        let value = encode_backends(&many);
        assert_eq!(value.count as usize, abi::SVC_BACKENDS);
        assert_eq!(
            decode_backends(4, &value),
            many[..abi::SVC_BACKENDS].to_vec()
        );
        assert_eq!(value.backends[0].port, 8000u16.to_be());
        let v6: Backends = vec![("fd00::5".parse().unwrap(), 53)];
        assert_eq!(decode_backends(6, &encode_backends(&v6)), v6);
        assert!(decode_backends(4, &encode_backends(&Vec::new())).is_empty());
    }
}
