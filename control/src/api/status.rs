//! What the router is doing: liveness, the dataplane's counters (once or streamed), its lookup
//! tables and top talkers, and this API's own document.

use std::time::Instant;

use super::{
    Api, Problem,
    http::{Answer, Call, Reply, ok},
    models, openapi,
};

/// `GET /health`: `ok`, or `degraded` while the plugin host restarts or a plugin is quarantined
/// (the router forwards all the same), with the plugin host's report.
pub(super) fn health(api: &Api, _: &Call<'_>) -> Reply {
    let plugins = api
        .plugin_report
        .as_ref()
        .map(|r| r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
    let healthy = plugins.as_ref().is_none_or(crate::plugins::HostReport::healthy);
    ok(models::Health {
        status: if healthy { "ok" } else { "degraded" }.into(),
        set_up: api.store.is_set_up()?,
        version: env!("CARGO_PKG_VERSION").into(),
        plugins,
    })
}

/// `GET /openapi.json`.
pub(super) fn openapi_document(_: &Api, _: &Call<'_>) -> Reply {
    ok(openapi())
}

/// `GET /counters`.
pub(super) fn counters(api: &Api, _: &Call<'_>) -> Reply {
    ok(crate::show::stats(&api.pin)?)
}

/// `GET /counters/stream`: the counters every second, as server-sent events.
#[expect(clippy::unnecessary_wraps, reason = "a handler")]
pub(super) fn counter_stream(_: &Api, _: &Call<'_>) -> Reply {
    Ok(Answer::Stream)
}

/// `GET /lookup-tables`.
pub(super) fn lookup_tables(api: &Api, _: &Call<'_>) -> Reply {
    ok(sluice_dataplane::LookupView::open(&api.pin)?.usage())
}

/// `GET /top-talkers?limit=N` (10 by default, 100 at most): rates over the time since the
/// previous read.
pub(super) fn top_talkers(api: &Api, call: &Call<'_>) -> Reply {
    let limit = match call.query("limit") {
        None => 10,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| Problem::field("limit", "1 to 100"))?,
    };
    let read = crate::show::talkers(&api.pin)?;
    let mut top = api.talkers.lock().expect("lock").update(Instant::now(), &read);
    top.talkers.truncate(limit);
    ok(top)
}
