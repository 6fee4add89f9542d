//! Memory accounting: the VMM's resident memory excluding guest RAM.
//!
//! Firecracker's convention: VMM overhead is the RSS of every mapping that is
//! not guest memory. We read /proc/self/smaps and leave out the mappings
//! that fall inside guest RAM's host ranges.

/// Resident bytes of this process outside `guest_ranges` (host VA ranges).
pub fn rss_excluding(guest_ranges: &[(u64, u64)]) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(rss_excluding_in(&smaps, guest_ranges))
}

/// The parsing half of [`rss_excluding`], separate for testing.
pub fn rss_excluding_in(smaps: &str, guest_ranges: &[(u64, u64)]) -> u64 {
    let mut total_kib = 0u64;
    let mut counting = false;
    for line in smaps.lines() {
        if let Some((start, end)) = mapping_range(line) {
            counting = !guest_ranges.iter().any(|(gs, ge)| start < *ge && *gs < end);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if counting {
                total_kib += rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total_kib * 1024
}

/// Parses "start-end perms ..." mapping header lines.
fn mapping_range(line: &str) -> Option<(u64, u64)> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r-xp 00000000 fd:00 1 /usr/bin/vmmctl
Size:               1024 kB
Rss:                 300 kB
7f0000000000-7f0008000000 rw-s 00000000 00:01 2 /memfd:vmm-guest-ram (deleted)
Size:             131072 kB
Rss:               40000 kB
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn guest_ram_is_left_out() {
        let guest = [(0x7f00_0000_0000, 0x7f00_0800_0000)];
        assert_eq!(rss_excluding_in(SMAPS, &guest), 312 * 1024);
        assert_eq!(rss_excluding_in(SMAPS, &[]), 40312 * 1024);
    }

    #[test]
    fn reads_this_process() {
        assert!(rss_excluding(&[]).unwrap() > 0);
    }
}
