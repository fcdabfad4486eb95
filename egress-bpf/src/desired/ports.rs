//! Port ranges as aligned blocks: the policy maps are LPM tries keyed on
//! the port's top bits.

/// `start..=end` as aligned blocks `(first port, prefix bits)`.
pub fn prefix_blocks(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut s = u32::from(start);
    let e = u32::from(end);
    while s <= e {
        // The largest aligned block starting at s that fits.
        let mut size: u32 = if s == 0 {
            1 << 16
        } else {
            1 << s.trailing_zeros().min(16)
        };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, (16 - size.trailing_zeros()) as u8));
        s += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PolicyEntry;

    fn covered(blocks: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..=u16::MAX)
            .filter(|p| {
                blocks.iter().any(|(port, bits)| {
                    PolicyEntry {
                        endpoint: 0,
                        identity: 0,
                        direction: 0,
                        protocol: 6,
                        port: *port,
                        port_bits: *bits,
                    }
                    .covers_port(*p)
                })
            })
            .collect();
        ports.dedup();
        ports
    }

    #[test]
    fn prefix_blocks_cover_exactly_the_range() {
        for (s, e) in [
            (80, 80),
            (8000, 8099),
            (0, 65535),
            (1, 65535),
            (1024, 2047),
            (65535, 65535),
            (3, 17),
        ] {
            let blocks = prefix_blocks(s, e);
            assert_eq!(
                covered(&blocks),
                (s..=e).collect::<Vec<_>>(),
                "{s}-{e}: {blocks:?}"
            );
            assert!(blocks.len() <= 32, "{s}-{e} needs {} blocks", blocks.len());
        }
        assert_eq!(prefix_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(prefix_blocks(443, 443), vec![(443, 16)]);
    }
}
