//! Reading criterion's results back, to print ratios beside the peers.

/// Mean time (ns) of `group/id` from criterion's output directory.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let text =
        std::fs::read_to_string(format!("{dir}/criterion/{group}/{id}/new/estimates.json")).ok()?;
    let rest = &text[text.find("\"mean\"")?..];
    let p = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let num: String = rest[p..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse().ok()
}
