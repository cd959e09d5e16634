//! How the page writes names and figures: replica hues, escaping for HTML built by hand,
//! round-trip classes and ages. Shared by the page's small and large views.

/// Hues replicas are drawn in: cyans, blues, violets and purples, clear of the status
/// colours (red, amber and green mean dead, suspect and alive on this page, and nothing
/// else), and far enough apart to tell.
pub(super) const REPLICA_HUES: [u32; 8] = [195, 210, 225, 240, 255, 270, 285, 300];

/// A stable colour per replica, so rotation is visible at a glance. The page carries it
/// (`--hue`, and `data-hue` on the hero, which the strip of answers reuses).
pub fn hue(instance_id: &str) -> u32 {
    // FNV-1a: tiny and stable across builds and platforms.
    let hash = instance_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    REPLICA_HUES[hash as usize % REPLICA_HUES.len()]
}

/// Text for HTML built by hand.
pub(super) fn esc(s: &str) -> String {
    askama::filters::escape(s, askama::filters::Html)
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// Direct calls under a millisecond are fast on any network; over five, slow.
pub(super) fn rtt_class(rtt_ms: f64) -> &'static str {
    if rtt_ms < 1.0 {
        "fast"
    } else if rtt_ms < 5.0 {
        "ok"
    } else {
        "slow"
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1000..=119_999 => format!("{:.0} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}
