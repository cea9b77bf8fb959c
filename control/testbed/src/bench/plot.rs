//! The report's bar chart (`--plot`): the rate of every forwarder in every cell, as a standalone
//! SVG document.

use std::fmt::Write as _;

use super::{args::Forwarder, report::Report};

impl Report {
    /// The rates as a bar chart.
    pub(super) fn svg(&self) -> String {
        let series: Vec<(&str, &str)> =
            Forwarder::ALL.iter().map(|f| (f.name(), forwarder_colour(*f))).collect();
        let groups: Vec<(String, Vec<Bar>)> = self
            .results
            .iter()
            .map(|c| {
                let label = if c.table == "one" {
                    format!("{} one route", c.family)
                } else {
                    format!("{} full table ({})", c.family, thousands(c.routes))
                };
                let bars = Forwarder::ALL
                    .iter()
                    .map(|f| {
                        match (c.forwarders.get(f.name()), c.failures.contains_key(f.name())) {
                            (Some(m), _) => Bar::Value(m.mpps),
                            (None, true) => Bar::Failed,
                            (None, false) => Bar::Absent,
                        }
                    })
                    .collect();
                (label, bars)
            })
            .collect();
        bar_chart(
            &format!(
                "Forwarding rate, {} UDP, {} destinations (Mpps)",
                self.frames(),
                self.destinations
            ),
            &format!(
                "one veth chain, {} CPUs, Linux {}, load average {:.2} at the start",
                self.cpus, self.kernel, self.load_average.start[0]
            ),
            &series,
            &groups,
        )
    }
}

fn forwarder_colour(f: Forwarder) -> &'static str {
    match f {
        Forwarder::Linux => "#9d9d9d",
        Forwarder::FibLookup => "#4c78a8",
        Forwarder::Ceiling => "#54a24b",
        Forwarder::CeilingRead => "#88d27a",
        Forwarder::Sluice => "#e45756",
        Forwarder::SluiceHooks => "#f58518",
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The top of a value axis for values up to `max`, and its tick interval: about five intervals
/// of 1, 2, 2.5 or 5 times a power of ten.
fn axis(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    ((max / step - 1e-9).ceil().max(1.0) * step, step)
}

/// Escapes text for SVG.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One bar of [`bar_chart`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bar {
    /// Drawn to scale with its value above it.
    Value(f64),
    /// Not measured because the measurement failed: a note in its place.
    Failed,
    /// Not measured (not asked for): left out.
    Absent,
}

/// A grouped bar chart as a standalone SVG document: one group per entry of `groups`, one bar per
/// series (name and colour).
fn bar_chart(
    title: &str,
    subtitle: &str,
    series: &[(&str, &str)],
    groups: &[(String, Vec<Bar>)],
) -> String {
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 84.0;
    const PLOT: f64 = 300.0;
    const BOTTOM: f64 = 48.0;
    const BAR: f64 = 30.0;
    const GAP: f64 = 4.0;
    const PAD: f64 = 36.0;
    let bars = series.len().max(1) as f64;
    let group_width = bars * (BAR + GAP) - GAP + PAD;
    let width = (LEFT + PAD / 2.0 + group_width * groups.len().max(1) as f64 + RIGHT).max(560.0);
    let height = TOP + PLOT + BOTTOM;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter_map(|b| match b {
            Bar::Value(v) => Some(*v),
            _ => None,
        })
        .fold(0.0f64, f64::max);
    let (top, step) = axis(max);
    let y = |v: f64| TOP + PLOT - v / top * PLOT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(s, r##"<text x="{LEFT}" y="40" fill="#555">{}</text>"##, xml_escape(subtitle));
    let mut lx = LEFT;
    for (name, colour) in series {
        let _ = writeln!(s, r#"<rect x="{lx:.1}" y="52" width="12" height="12" fill="{colour}"/>"#);
        let _ = writeln!(s, r#"<text x="{:.1}" y="62">{}</text>"#, lx + 16.0, xml_escape(name));
        lx += 16.0 + 8.0 * name.len() as f64 + 18.0;
    }
    for v in (0u32..).map(|i| step * f64::from(i)).take_while(|v| *v <= top + step / 2.0) {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            width - RIGHT,
            y(v),
            y(v),
            if v > 0.0 { "#e4e4e4" } else { "#333" },
            LEFT - 6.0,
            y(v) + 4.0,
            format_tick(v)
        );
    }
    for (g, (label, values)) in groups.iter().enumerate() {
        let x0 = LEFT + PAD / 2.0 + g as f64 * group_width;
        for (b, value) in values.iter().enumerate() {
            let (name, colour) = series.get(b).copied().unwrap_or(("", "#000"));
            let x = x0 + b as f64 * (BAR + GAP);
            let v = match value {
                Bar::Value(v) => v,
                Bar::Absent => continue,
                Bar::Failed => {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="start" font-size="10" fill="{colour}" transform="rotate(-90 {:.1} {:.1})">{} failed</text>"#,
                        x + BAR / 2.0 + 4.0,
                        TOP + PLOT - 6.0,
                        x + BAR / 2.0 + 4.0,
                        TOP + PLOT - 6.0,
                        xml_escape(name)
                    );
                    continue;
                }
            };
            let _ = writeln!(
                s,
                r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{BAR}" height="{:.1}" fill="{colour}"><title>{}: {v:.3}</title></rect>"#,
                y(*v),
                TOP + PLOT - y(*v),
                xml_escape(name)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{v:.2}</text>"#,
                x + BAR / 2.0,
                y(*v) - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + (group_width - PAD) / 2.0,
            TOP + PLOT + 20.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn format_tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round() {
        for (x, top, step) in [
            (0.0, 1.0, 0.2),
            (0.77, 0.8, 0.2),
            (2.39, 2.5, 0.5),
            (2.55, 3.0, 1.0),
            (3.1, 4.0, 1.0),
            (11.0, 12.5, 2.5),
            (2.0, 2.0, 0.5),
        ] {
            let (t, s) = axis(x);
            assert!((t - top).abs() < 1e-9 && (s - step).abs() < 1e-9, "{x} -> {t} by {s}");
        }
        assert_eq!(format_tick(2.5), "2.5");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(230), "230");
    }

    #[test]
    fn bar_chart_draws_every_value_to_scale() {
        let series = [("linux", "#111"), ("sluice <xdp>", "#222")];
        let groups = vec![
            ("ipv4 one route".to_owned(), vec![Bar::Value(1.0), Bar::Value(5.0)]),
            ("ipv6 & full".to_owned(), vec![Bar::Absent, Bar::Value(2.0)]),
            ("ipv6 one route".to_owned(), vec![Bar::Value(0.5), Bar::Failed]),
        ];
        let svg = bar_chart("Rates", "sub", &series, &groups);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 4, "one bar per value");
        assert!(svg.contains("sluice &lt;xdp&gt; failed"), "a failed measurement is marked");
        let heights: Vec<f64> = svg
            .lines()
            .filter(|l| l.contains(r#"class="bar""#))
            .map(|l| {
                let h = l.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        // The tallest value reaches the top of the axis (5 is a round top); the others scale.
        assert_eq!(heights.len(), 4);
        for (h, want) in heights.iter().zip([60.0, 300.0, 120.0, 30.0]) {
            assert!((h - want).abs() < 0.11, "{heights:?}");
        }
        assert!(svg.contains("sluice &lt;xdp&gt;") && svg.contains("ipv6 &amp; full"));
        assert!(!svg.contains("<xdp>") && !svg.contains(" & "));
        // Balanced elements.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(svg.matches("<title>").count(), 4);
    }
}
