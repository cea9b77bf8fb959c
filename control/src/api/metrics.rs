//! The counters for machines: Prometheus text at `/metrics`, and server-sent events every
//! second for the console.

use std::{fmt::Write as _, sync::atomic::Ordering, time::Duration};

use futures::StreamExt as _;
use sluice_dataplane::PinDir;

use super::Api;

impl Api {
    /// The Prometheus text of the counters and the API's own.
    pub(super) fn metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sluice_packets_total Packets by interface and outcome.");
        let _ = writeln!(out, "# TYPE sluice_packets_total counter");
        let stats = crate::show::stats(&self.pin).ok();
        let mut bytes = String::new();
        for i in stats.iter().flat_map(|s| &s.interfaces) {
            for (reason, c) in &i.counters {
                let labels = format!("interface=\"{}\",reason=\"{reason}\"", i.name);
                let _ = writeln!(out, "sluice_packets_total{{{labels}}} {}", c.packets);
                let _ = writeln!(bytes, "sluice_bytes_total{{{labels}}} {}", c.bytes);
            }
        }
        let _ = writeln!(out, "# HELP sluice_bytes_total Bytes by interface and outcome.");
        let _ = writeln!(out, "# TYPE sluice_bytes_total counter");
        out.push_str(&bytes);
        if let Ok(routes) = crate::show::routes(&self.pin) {
            let _ = writeln!(out, "# HELP sluice_routes Routes the dataplane holds.");
            let _ = writeln!(out, "# TYPE sluice_routes gauge");
            let v4 = routes.routes.iter().filter(|r| r.prefix.addr().is_ipv4()).count();
            let _ = writeln!(out, "sluice_routes{{family=\"ipv4\"}} {v4}");
            let _ = writeln!(out, "sluice_routes{{family=\"ipv6\"}} {}", routes.routes.len() - v4);
        }
        let _ = writeln!(out, "# HELP sluice_api_requests_total Requests the API answered.");
        let _ = writeln!(out, "# TYPE sluice_api_requests_total counter");
        let _ =
            writeln!(out, "sluice_api_requests_total {}", self.requests.load(Ordering::Relaxed));
        let l = &crate::listener::STATS;
        let _ = writeln!(out, "# HELP sluice_api_connections Connections to the API open now.");
        let _ = writeln!(out, "# TYPE sluice_api_connections gauge");
        let _ = writeln!(out, "sluice_api_connections {}", l.open.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP sluice_api_connections_closed_total Connections to the API refused or closed \
             early, by reason."
        );
        let _ = writeln!(out, "# TYPE sluice_api_connections_closed_total counter");
        for (reason, n) in [
            ("global_cap", &l.refused_total),
            ("source_cap", &l.refused_per_source),
            ("handshake_timeout", &l.handshake_timeouts),
            ("idle_timeout", &l.idle_closed),
            ("accept_error", &l.accept_errors),
        ] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_api_connections_closed_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP sluice_api_refused_total Anonymous requests refused, by route and status."
        );
        let _ = writeln!(out, "# TYPE sluice_api_refused_total counter");
        for ((method, path, status), n) in self.refused.lock().expect("lock").iter() {
            let labels = format!("route=\"{method} /api/v1{path}\",status=\"{status}\"");
            let _ = writeln!(out, "sluice_api_refused_total{{{labels}}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP sluice_api_login_throttle_entries Sources and (user, source) pairs with failed logins held."
        );
        let _ = writeln!(out, "# TYPE sluice_api_login_throttle_entries gauge");
        let held = self.sessions.throttle.len();
        let _ = writeln!(out, "sluice_api_login_throttle_entries {held}");
        if let Some(bird) = &self.bird {
            Self::routing_metrics(&mut out, bird);
        }
        out
    }

    /// The routing daemon's series: whether it answers, its restarts, and each BGP session's
    /// or OSPF instance's state and route counts.
    fn routing_metrics(out: &mut String, bird: &crate::bird::Bird) {
        let protocols = bird.protocols();
        let _ = writeln!(
            out,
            "# HELP sluice_routing_daemon_up Whether the routing daemon (BIRD) answers."
        );
        let _ = writeln!(out, "# TYPE sluice_routing_daemon_up gauge");
        let _ = writeln!(out, "sluice_routing_daemon_up {}", u8::from(protocols.is_ok()));
        let _ = writeln!(
            out,
            "# HELP sluice_routing_daemon_restarts_total Times the routing daemon was started \
             again after it died."
        );
        let _ = writeln!(out, "# TYPE sluice_routing_daemon_restarts_total counter");
        let restarts = bird.restarts.load(Ordering::Relaxed);
        let _ = writeln!(out, "sluice_routing_daemon_restarts_total {restarts}");
        let protocols = protocols.unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP sluice_routing_protocol_up Whether a BGP session is established or an OSPF \
             instance runs (BIRD's state up)."
        );
        let _ = writeln!(out, "# TYPE sluice_routing_protocol_up gauge");
        let label = |s: &str| s.replace(['\\', '"', '\n'], "_");
        for p in &protocols {
            let up = u8::from(p.state == "up");
            let labels = format!(
                "name=\"{}\",kind=\"{}\",neighbor=\"{}\"",
                label(&p.name),
                p.kind,
                label(p.neighbor.as_deref().unwrap_or(""))
            );
            let _ = writeln!(out, "sluice_routing_protocol_up{{{labels}}} {up}");
        }
        let _ = writeln!(
            out,
            "# HELP sluice_routing_protocol_routes Routes of a BGP session or OSPF instance: \
             imported, exported, and import updates filtered."
        );
        let _ = writeln!(out, "# TYPE sluice_routing_protocol_routes gauge");
        for p in &protocols {
            for (what, n) in [
                ("imported", p.routes.imported),
                ("exported", p.routes.exported),
                ("filtered", p.routes.filtered),
            ] {
                let labels =
                    format!("name=\"{}\",kind=\"{}\",routes=\"{what}\"", label(&p.name), p.kind);
                let _ = writeln!(out, "sluice_routing_protocol_routes{{{labels}}} {n}");
            }
        }
    }
}

/// The counters every second, as server-sent events.
pub(super) fn counter_events(
    pin: PinDir,
) -> impl futures::Stream<Item = Result<warp::sse::Event, std::convert::Infallible>> {
    let ticks = tokio_stream_interval(Duration::from_secs(1));
    ticks.map(move |()| {
        let data = crate::show::stats(&pin)
            .ok()
            .and_then(|s| serde_json::to_string(&s).ok())
            .unwrap_or_else(|| "{}".into());
        Ok(warp::sse::Event::default().event("counters").data(data))
    })
}

fn tokio_stream_interval(period: Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(tokio::time::interval(period), |mut i| async move {
        i.tick().await;
        Some(((), i))
    })
}
