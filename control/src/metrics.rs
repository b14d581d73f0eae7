//! The text exposition both binaries serve on `/metrics`.

/// Every metric of `registry` in Prometheus's text format.
pub fn render(registry: &prometheus::Registry) -> String {
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .expect("encoding metrics into a string cannot fail");
    out
}
