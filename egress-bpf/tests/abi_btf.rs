//! The kernel ABI checked, not trusted (as Cilium's `pkg/alignchecker`): the
//! BTF clang wrote into the compiled objects says how the C side lays out
//! every struct and what every enum constant is; this compares that with
//! `egress_bpf::abi`.
//!
//! - Every struct shared with user space: size, and each field's name,
//!   offset and size, against its `#[repr(C)]` mirror. LPM trie keys are
//!   mirrored without their `prefixlen` (aya's `lpm_trie::Key` adds it).
//! - Every `tg_*` struct in an object must be mirrored here, and every
//!   mirrored one must be in each object (`struct tg_abi` in `tollgate.h`
//!   anchors those no map names).
//! - Every enumerator of every `tg_*` enum, against the constants `build.rs`
//!   generated from the header, both ways.
//!
//! Unprivileged: it reads files, loads nothing.

use std::mem::{offset_of, size_of};

use aya::maps::lpm_trie::Key;
use btf_rs::{Btf, BtfType, Type};
use egress_bpf::abi::{self, *};

const OBJECTS: [&str; 2] = [
    concat!(env!("OUT_DIR"), "/from_pod.bpf.o"),
    concat!(env!("OUT_DIR"), "/to_pod.bpf.o"),
];

/// Structs whose name starts with `tg_` that user space never sees.
const KERNEL_ONLY: [&str; 5] = [
    "tg_abi",        // the BTF anchor itself
    "tg_packet",     // parse.h's parsed headers
    "tg_decision",   // decide.h's verdict of one packet
    "tg_frag_key",   // maps.h's fragment tracking (key and value): never
    "tg_frag_value", // read or written by user space
];

/// A struct layout: `(name, byte offset, byte size)` per field.
#[derive(Debug)]
struct Layout {
    size: usize,
    fields: Vec<(String, usize, usize)>,
}

/// One Rust mirror of a C struct.
struct Mirror {
    c_name: &'static str,
    rust_name: &'static str,
    layout: Layout,
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// The layout of a `#[repr(C)]` mirror. The destructuring pattern (no `..`)
/// makes a Rust field missing from the list a compile error.
macro_rules! mirror {
    ($c_name:literal, $ty:ident { $($field:ident),+ $(,)? }) => {{
        #[allow(dead_code)]
        fn all_fields_listed(v: abi::$ty) {
            let abi::$ty { $($field: _),+ } = v;
        }
        Mirror {
            c_name: $c_name,
            rust_name: stringify!($ty),
            layout: Layout {
                size: size_of::<abi::$ty>(),
                fields: vec![$((
                    stringify!($field).to_string(),
                    offset_of!(abi::$ty, $field),
                    field_size(|v: &abi::$ty| &v.$field),
                )),+],
            },
        }
    }};
}

/// An LPM trie key: aya's `Key<T>` puts a `u32` prefix length before the
/// mirror, where C has `__u32 prefixlen`.
macro_rules! lpm_mirror {
    ($c_name:literal, $ty:ident { $($field:ident),+ $(,)? }) => {{
        let mut m = mirror!($c_name, $ty { $($field),+ });
        let data_at = size_of::<Key<abi::$ty>>() - size_of::<abi::$ty>();
        for f in &mut m.layout.fields {
            f.1 += data_at;
        }
        m.layout.fields.insert(0, ("prefixlen".to_string(), 0, data_at));
        m.layout.size = size_of::<Key<abi::$ty>>();
        m.rust_name = concat!("lpm_trie::Key<", stringify!($ty), ">");
        m
    }};
}

fn mirrors() -> Vec<Mirror> {
    vec![
        mirror!(
            "tg_endpoint",
            Endpoint {
                identity,
                enforce_ingress,
                enforce_egress,
                audit,
                allow_host
            }
        ),
        mirror!(
            "tg_endpoint_addr",
            EndpointAddr {
                ifindex,
                family,
                pad,
                addr
            }
        ),
        lpm_mirror!("tg_ipcache_key", IpcacheKey { family, pad, addr }),
        mirror!("tg_ipcache_value", IpcacheValue { identity, pad }),
        lpm_mirror!(
            "tg_policy_key",
            PolicyKey {
                endpoint,
                identity,
                direction,
                protocol,
                dport
            }
        ),
        mirror!(
            "tg_policy_value",
            PolicyValue {
                rule_id,
                action,
                proxy,
                pad
            }
        ),
        mirror!(
            "tg_fqdn_key",
            FqdnKey {
                endpoint,
                family,
                pad,
                addr
            }
        ),
        mirror!(
            "tg_fqdn_grant",
            FqdnGrant {
                expires_ns,
                port_start,
                port_end,
                protocol,
                pad
            }
        ),
        mirror!("tg_fqdn_value", FqdnValue { grants, count, pad }),
        mirror!(
            "tg_ct_key",
            CtKey {
                ifindex,
                family,
                protocol,
                pad,
                sport,
                dport,
                saddr,
                daddr
            }
        ),
        mirror!(
            "tg_ct_value",
            CtValue {
                last_seen_ns,
                created_ns,
                rule_id,
                direction,
                flags,
                proxy,
                reason,
                policy_rev,
                pad
            }
        ),
        mirror!(
            "tg_flow_event",
            FlowEvent {
                ts_ns,
                ifindex,
                identity,
                rule_id,
                family,
                protocol,
                direction,
                verdict,
                reason,
                pad0,
                sport,
                dport,
                pad1,
                saddr,
                daddr,
            }
        ),
        mirror!(
            "tg_service_key",
            ServiceKey {
                family,
                protocol,
                port,
                addr
            }
        ),
        mirror!("tg_backend", Backend { addr, port, pad }),
        mirror!(
            "tg_service_value",
            ServiceValue {
                count,
                pad,
                backends
            }
        ),
        mirror!("tg_lb_flow", LbFlow { addr, port, slot }),
        mirror!("tg_rev_nat", RevNat { addr, port, pad }),
        mirror!(
            "tg_settings",
            Settings {
                dns_interval_ns,
                dns_burst_ns
            }
        ),
    ]
}

/// The objects build.rs compiled, by file name, with their BTF.
fn objects() -> Vec<(&'static str, Btf)> {
    OBJECTS
        .iter()
        .map(|path| {
            let raw = btf_rs::utils::elf::extract_btf_from_file(path)
                .unwrap_or_else(|e| panic!("{path}: no readable .BTF section: {e}"));
            let btf = Btf::from_bytes(&raw).unwrap_or_else(|e| panic!("{path}: bad BTF: {e}"));
            (path.rsplit('/').next().unwrap(), btf)
        })
        .collect()
}

fn name(btf: &Btf, t: &dyn BtfType) -> String {
    btf.resolve_name(t).unwrap_or_default()
}

/// Bytes a BTF type occupies (through typedefs, qualifiers and arrays).
fn type_size(btf: &Btf, t: &Type) -> usize {
    let chained = |t: &dyn BtfType| {
        let next = btf.resolve_chained_type(t).expect("dangling BTF type id");
        type_size(btf, &next)
    };
    match t {
        Type::Int(i) => i.size(),
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Enum(e) => e.size(),
        Type::Enum64(e) => e.size(),
        Type::Ptr(_) => 8,
        Type::Array(a) => a.len() * chained(a),
        Type::Typedef(x) => chained(x),
        Type::Volatile(x) | Type::Const(x) | Type::Restrict(x) => chained(x),
        other => panic!("no size for BTF {} in a shared struct", other.name()),
    }
}

/// Every named struct in an object's BTF.
fn c_structs(btf: &Btf) -> Vec<(String, Layout)> {
    let mut out = Vec::new();
    for t in all_types(btf) {
        let Type::Struct(s) = t else { continue };
        let fields = s
            .members
            .iter()
            .map(|m| {
                let field = name(btf, m);
                assert!(
                    m.bitfield_size().is_none_or(|bits| bits == 0) && m.bit_offset() % 8 == 0,
                    "{}.{field} is a bit field: no Rust mirror can match it",
                    name(btf, &s)
                );
                let ty = btf.resolve_chained_type(m).expect("dangling member type");
                (field, m.bit_offset() as usize / 8, type_size(btf, &ty))
            })
            .collect();
        out.push((
            name(btf, &s),
            Layout {
                size: s.size(),
                fields,
            },
        ));
    }
    out
}

/// Every enumerator of every named enum: `(enum, enumerator, value)`.
fn c_enumerators(btf: &Btf) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for t in all_types(btf) {
        match &t {
            Type::Enum(e) => {
                for m in &e.members {
                    out.push((name(btf, e), name(btf, m), u64::from(m.val())));
                }
            }
            Type::Enum64(e) => {
                for m in &e.members {
                    out.push((name(btf, e), name(btf, m), m.val()));
                }
            }
            _ => {}
        }
    }
    out
}

/// Every type of an object's BTF.
fn all_types(btf: &Btf) -> impl Iterator<Item = Type> + '_ {
    let (first, last) = btf.base().type_id_range();
    (first..=last).map(|id| btf.resolve_type_by_id(id).expect("unreadable BTF type"))
}

/// What differs between C's layout and Rust's, one line each.
fn layout_mismatches(object: &str, m: &Mirror, c: &Layout) -> Vec<String> {
    let what = format!("{object}: struct {} vs abi::{}", m.c_name, m.rust_name);
    let rust = &m.layout;
    let mut out = Vec::new();
    if c.size != rust.size {
        out.push(format!(
            "{what}: size is {} bytes in C, {} in Rust",
            c.size, rust.size
        ));
    }
    for (field, c_offset, c_size) in &c.fields {
        match rust.fields.iter().find(|(f, _, _)| f == field) {
            None => out.push(format!(
                "{what}: field `{field}` (C offset {c_offset}, size {c_size}) has no Rust field"
            )),
            Some((_, offset, size)) => {
                if offset != c_offset {
                    out.push(format!(
                        "{what}: field `{field}` is at byte {c_offset} in C, {offset} in Rust"
                    ));
                }
                if size != c_size {
                    out.push(format!(
                        "{what}: field `{field}` is {c_size} bytes in C, {size} in Rust"
                    ));
                }
            }
        }
    }
    for (field, offset, _) in &rust.fields {
        if !c.fields.iter().any(|(f, _, _)| f == field) {
            out.push(format!(
                "{what}: Rust field `{field}` (offset {offset}) is not in C"
            ));
        }
    }
    out
}

#[test]
fn every_shared_struct_has_the_layout_clang_gave_it() {
    let mirrors = mirrors();
    let mut problems = Vec::new();
    for (object, btf) in objects() {
        let structs = c_structs(&btf);
        for m in &mirrors {
            match structs.iter().find(|(n, _)| n == m.c_name) {
                Some((_, c)) => problems.extend(layout_mismatches(object, m, c)),
                None => problems.push(format!(
                    "{object}: struct {} is not in the object's BTF (add a member of its type to \
                     struct tg_abi in tollgate.h)",
                    m.c_name
                )),
            }
        }
        for (c_name, _) in &structs {
            if c_name.starts_with("tg_")
                && !KERNEL_ONLY.contains(&c_name.as_str())
                && !mirrors.iter().any(|m| m.c_name == c_name)
            {
                problems.push(format!(
                    "{object}: struct {c_name} is shared (in the object's BTF) but has no Rust \
                     mirror checked in tests/abi_btf.rs (or add it to KERNEL_ONLY)"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the C and Rust ABIs disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn lpm_fixed_bits_are_the_key_bytes_before_the_variable_part() {
    for (object, btf) in objects() {
        let structs = c_structs(&btf);
        let offset = |s: &str, f: &str| {
            let (_, layout) = structs.iter().find(|(n, _)| n == s).unwrap();
            layout.fields.iter().find(|(n, _, _)| n == f).unwrap().1 as u32
        };
        let prefix_end = offset("tg_policy_key", "endpoint");
        assert_eq!(
            POLICY_FIXED_BITS,
            8 * (offset("tg_policy_key", "dport") - prefix_end),
            "{object}: TG_POLICY_FIXED_BITS does not end where tg_policy_key.dport starts"
        );
        assert_eq!(
            IPCACHE_FIXED_BITS,
            8 * (offset("tg_ipcache_key", "addr") - offset("tg_ipcache_key", "family")),
            "{object}: TG_IPCACHE_FIXED_BITS does not end where tg_ipcache_key.addr starts"
        );
    }
}

#[test]
fn every_shared_constant_has_the_value_clang_gave_it() {
    let mut problems = Vec::new();
    for (object, btf) in objects() {
        let c = c_enumerators(&btf);
        for (e, name, value) in C_ENUMS {
            match c.iter().find(|(ce, cn, _)| ce == e && cn == name) {
                None => problems.push(format!(
                    "{object}: {name} (enum {e}) is not in the object's BTF (add a member of type \
                     enum {e} to struct tg_abi in tollgate.h)"
                )),
                Some((_, _, c_value)) if c_value != value => problems.push(format!(
                    "{object}: {name} is {c_value} in C, {value} in the generated Rust"
                )),
                Some(_) => {}
            }
        }
        for (e, name, _) in &c {
            if e.starts_with("tg_") && !C_ENUMS.iter().any(|(re, rn, _)| re == e && rn == name) {
                problems.push(format!(
                    "{object}: {name} (enum {e}) was not generated for Rust by build.rs"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the C and Rust constants disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The anchor's section must stay one the loader ignores: parsing and BTF
/// fixup as aya does them succeed, and no map is made of it.
#[test]
fn the_loader_ignores_the_btf_anchor() {
    for path in OBJECTS {
        let bytes = std::fs::read(path).unwrap();
        let mut obj = aya_obj::Object::parse(&bytes)
            .unwrap_or_else(|e| panic!("{path}: aya cannot parse it: {e}"));
        let maps: Vec<&String> = obj.maps.keys().collect();
        assert!(
            maps.iter().all(|m| m.starts_with("tg_")),
            "{path}: the loader would create maps besides tg_*: {maps:?}"
        );
        let all = aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
        obj.fixup_and_sanitize_btf(&all)
            .unwrap_or_else(|e| panic!("{path}: aya cannot fix up its BTF: {e}"));
    }
}
