//! Routes: those the dataplane holds (searched, cut, each with the protocol that installed it),
//! and the static routes of the configuration, added and removed by committing it.

use std::time::Duration;

use super::{
    Api, Problem,
    config::commit_change,
    http::{Call, Reply, body, created, ok},
    models::{self, RouteEntry, RouteKey, StaticRoute},
};

/// How long a route list waits for the daemon's loop to name origins (it answers between two
/// batches of netlink events; without an answer the origins are left out).
const ORIGIN_WAIT: Duration = Duration::from_secs(2);

/// Routes returned with their origin at most (looking them up costs the daemon's loop).
const ORIGIN_MAX: usize = 10_000;

/// What a route's protocol number (`rtm_protocol`) says of where it came from.
fn origin_name(protocol: Option<u8>) -> &'static str {
    use netlink_packet_route::route::RouteProtocol as P;
    let Some(p) = protocol else { return "neighbour" };
    if p == sluice_dataplane::apply::RTPROT_SLUICE {
        return "static";
    }
    match P::from(p) {
        P::Kernel => "kernel",
        P::Boot => "boot",
        P::Static => "static (ip route)",
        P::Ra => "router advertisement",
        P::Zebra => "zebra (FRR)",
        P::Bird => "bird",
        P::Dhcp => "dhcp",
        P::Babel => "babel",
        P::Bgp => "bgp (FRR)",
        P::Isis => "is-is (FRR)",
        P::Ospf => "ospf (FRR)",
        P::Rip => "rip (FRR)",
        _ => "other",
    }
}

impl Api {
    /// The protocols that installed these prefixes' routes (of the mirrored table), as the
    /// daemon's RIB has them; `None` where it has no route (a neighbour's host route) or does not
    /// answer in time.
    fn origins_of(&self, prefixes: Vec<ipnet::IpNet>) -> Vec<Option<u8>> {
        let n = prefixes.len();
        let Some(tx) = &self.origins else { return vec![None; n] };
        let (reply, answer) = std::sync::mpsc::channel();
        if tx.send((prefixes, reply)).is_err() {
            return vec![None; n];
        }
        answer.recv_timeout(ORIGIN_WAIT).unwrap_or_else(|_| vec![None; n])
    }
}

/// `GET /routes`: the dataplane's routes, optionally searched (`q`, any text of a route) and cut
/// (`limit`), each with its origin when at most [`ORIGIN_MAX`] are returned.
pub(super) fn list(api: &Api, call: &Call<'_>) -> Reply {
    let all = crate::show::routes(&api.pin)?;
    let limit = match call.query("limit") {
        None => None,
        Some(l) => Some(
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| Problem::field("limit", "1 to 1000000"))?,
        ),
    };
    let q = call.query("q").map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
    let mut list = all.routes;
    let total = list.len();
    if let Some(q) = &q {
        // The route's JSON text, as the answer shows it.
        let text = |r: &crate::show::RouteJson| {
            serde_json::to_value(r).map(|v| v.to_string().to_lowercase()).unwrap_or_default()
        };
        list.retain(|route| text(route).contains(q.as_str()));
    }
    let matched = list.len();
    if let Some(l) = limit {
        list.truncate(l);
    }
    let origins = if list.len() <= ORIGIN_MAX {
        let protocols = api.origins_of(list.iter().map(|r| r.prefix).collect());
        let origin = |(r, p): (&crate::show::RouteJson, Option<u8>)| {
            let local = r.action == "local";
            (Some(if local { "local" } else { origin_name(p) }), Some(p))
        };
        list.iter().zip(protocols).map(origin).collect()
    } else {
        vec![(None, None); list.len()]
    };
    let routes = list
        .into_iter()
        .zip(origins)
        .map(|(route, (origin, protocol))| RouteEntry { route, origin, protocol })
        .collect();
    ok(models::RouteList { routes, total, matched })
}

/// `GET /routes/static`.
pub(super) fn static_list(api: &Api, _: &Call<'_>) -> Reply {
    ok(api.store.config()?.routes)
}

/// `POST /routes/static`: a route added to the configuration, committed at once
/// (`?confirm_seconds=N` to confirm).
pub(super) fn static_add(api: &Api, call: &Call<'_>) -> Reply {
    let route: StaticRoute = call.body()?;
    check_interface(route.dev.as_deref())?;
    let mut config = api.store.config()?;
    if config.routes.iter().any(|x| x.prefix == route.prefix && x.metric == route.metric) {
        let detail = format!("{} metric {} exists", route.prefix, route.metric);
        return Err(Problem::conflict("exists", detail));
    }
    config.routes.push(route.clone());
    commit_change(api, call, &config, format!("add route {}", route.prefix))?;
    created(route)
}

/// `DELETE /routes/static`: the route named in the body or the query (any metric when none is
/// given) removed from the configuration, committed at once.
pub(super) fn static_remove(api: &Api, call: &Call<'_>) -> Reply {
    let route = route_key(call)?;
    let mut config = api.store.config()?;
    let before = config.routes.len();
    config
        .routes
        .retain(|x| !(x.prefix == route.prefix && route.metric.is_none_or(|m| m == x.metric)));
    if config.routes.len() == before {
        let detail = format!("no static route {}", route.prefix);
        return Err(Problem::not_found("no-route", detail));
    }
    commit_change(api, call, &config, format!("remove route {}", route.prefix))?;
    ok(models::Removed { removed: route.prefix.to_string() })
}

/// The route `DELETE /routes/static` names: in the body, or as `?prefix=P[&metric=M]`.
fn route_key(call: &Call<'_>) -> Result<RouteKey, Problem> {
    let b = &call.request.body;
    if !b.iter().all(u8::is_ascii_whitespace) {
        return body(b);
    }
    let prefix = call
        .query("prefix")
        .ok_or_else(|| Problem::field("prefix", "missing: in the body or as ?prefix="))?;
    let prefix =
        prefix.parse().map_err(|e| Problem::field("prefix", format!("{prefix:?}: {e}")))?;
    let metric = match call.query("metric") {
        Some(m) => Some(
            m.parse().map_err(|_| Problem::field("metric", format!("{m:?} is not a number")))?,
        ),
        None => None,
    };
    Ok(RouteKey { prefix, metric })
}

/// A route's interface must be a valid name the kernel has.
fn check_interface(dev: Option<&str>) -> Result<(), Problem> {
    let Some(dev) = dev else { return Ok(()) };
    if let Some(m) = sluice_store::interface_name_problem(dev) {
        return Err(Problem::field("dev", format!("interface name: {m}")));
    }
    if nix::net::if_::if_nametoindex(dev).is_err() {
        return Err(Problem::field("dev", format!("no interface {dev:?} on this router")));
    }
    Ok(())
}
