//! The configuration: the running revision, the candidate staged, diffed and committed (with
//! commit-confirm), the revision history, rollback, export and import. Every commit tells the
//! daemon, which applies the running configuration.

use std::{sync::Arc, time::Duration};

use sluice_store::{FieldError, Role, StoreError};
use warp::http::StatusCode;

use super::{
    Api, Problem,
    http::{Answer, Call, Reply, ok},
    models,
    plugins::{Fields, manifest_of},
};
use crate::plugins::Wanted;

/// The longest and shortest wait for a confirmation, seconds.
const CONFIRM_SECONDS: std::ops::RangeInclusive<u64> = 10..=3600;

/// Commits a whole configuration the API changed in one item (a route, an interface), asking
/// for a confirmation when the request has `?confirm_seconds=N`.
pub(super) fn commit_change(
    api: &Api,
    call: &Call<'_>,
    config: &models::Config,
    message: String,
) -> Result<(), Problem> {
    let confirm = match call.query("confirm_seconds") {
        Some(s) => match s.parse::<u64>() {
            Ok(s) if CONFIRM_SECONDS.contains(&s) => Some(Duration::from_secs(s)),
            _ => return Err(Problem::field("confirm_seconds", "10 to 3600")),
        },
        None => None,
    };
    api.check_protocols(config)?;
    let author = call.caller().author(message);
    api.store.commit_change(config, &author, confirm).map_err(Problem::of_item)?;
    api.changed.notify_one();
    Ok(())
}

/// Whether the request asks for the secrets (`?secrets=true`): an administrator's only, and
/// written to the audit log. Without it, configurations are shown redacted.
fn with_secrets(api: &Api, call: &Call<'_>) -> Result<bool, Problem> {
    match call.query("secrets") {
        None | Some("false") => Ok(false),
        Some("true") => {
            let c = call.caller();
            let action = format!("read secrets: GET /api/v1{}", call.request.path);
            if c.role != Role::Admin {
                let p = Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "?secrets=true needs an administrator",
                );
                api.audit(&c.who, &c.from, action, Err(&p));
                return Err(p);
            }
            api.audit(&c.who, &c.from, action, Ok(()));
            Ok(true)
        }
        Some(_) => Err(Problem::field("secrets", "true or false")),
    }
}

/// `config`, redacted unless `secrets`.
fn shown(config: models::Config, secrets: bool) -> models::Config {
    if secrets { config } else { config.redacted() }
}

/// `GET /config` (`?secrets=true`: with the secrets, administrators only).
pub(super) fn running(api: &Api, call: &Call<'_>) -> Reply {
    let secrets = with_secrets(api, call)?;
    ok(models::Running {
        revision: api.store.running()?.map(|r| r.id),
        config: shown(api.store.config()?, secrets),
        pending_confirm: api.store.pending_confirm()?,
    })
}

/// `GET /config/candidate` (`?secrets=true` as `GET /config`).
pub(super) fn candidate(api: &Api, call: &Call<'_>) -> Reply {
    let secrets = with_secrets(api, call)?;
    ok(shown(api.store.candidate()?, secrets))
}

/// Checks a whole configuration before it is staged or imported: its fields, then each plugin
/// entry new or changed against the running configuration as `POST /plugins` checks an upload
/// (a stored component and a manifest that matches it, then the plugin thread's checks and a
/// trial `init` with the entry's configuration). Entries unchanged since they were committed
/// are not judged again.
fn check_whole(api: &Api, config: &models::Config) -> Result<(), Problem> {
    let mut errors = config.validate();
    if errors.is_empty() {
        errors = api.store.plugin_problems(config)?;
    }
    if !errors.is_empty() {
        return Err(StoreError::Invalid(errors).into());
    }
    let running = api.store.config()?;
    let mut wanted = Vec::new();
    for (name, p) in &config.plugins {
        if running.plugins.get(name) == Some(p) {
            continue;
        }
        match manifest_of(name, p) {
            Ok(manifest) => wanted.push((name, manifest, p)),
            Err(problem) => errors.extend(problem.errors),
        }
    }
    if !errors.is_empty() {
        return Err(StoreError::Invalid(errors).into());
    }
    for (name, manifest, p) in wanted {
        let Some(wasm) = api.store.wasm(&p.wasm_sha256)? else {
            let field = format!("plugins.{name}.wasm_sha256");
            let message = "the component is no longer stored".to_owned();
            return Err(StoreError::Invalid(vec![FieldError { field, message }]).into());
        };
        let w = Wanted {
            manifest,
            wasm: Arc::new(wasm),
            config: p.config.to_string(),
            allow_match_all: p.allow_match_all,
        };
        api.check_plugin(w, &Fields::Entry(name.clone()))?;
    }
    Ok(())
}

/// `PUT /config/candidate`: a valid configuration, staged; the diff it makes.
pub(super) fn stage(api: &Api, call: &Call<'_>) -> Reply {
    let mut config: models::Config = call.body()?;
    api.store.restore_secrets(&mut config, true)?;
    check_whole(api, &config)?;
    api.store.stage(&config)?;
    ok(models::Staged { diff: api.store.diff()? })
}

/// `DELETE /config/candidate`.
pub(super) fn discard(api: &Api, _: &Call<'_>) -> Reply {
    api.store.discard()?;
    ok(models::Discarded { discarded: true })
}

/// `GET /config/diff`.
pub(super) fn diff(api: &Api, _: &Call<'_>) -> Reply {
    ok(api.store.diff()?)
}

/// `POST /config/commit`: the candidate, to be confirmed within `confirm_seconds` if given.
pub(super) fn commit(api: &Api, call: &Call<'_>) -> Reply {
    let b: models::Commit = call.body()?;
    let author = call.caller().author(b.message);
    if let Some(s) = b.confirm_seconds
        && !CONFIRM_SECONDS.contains(&s)
    {
        return Err(Problem::field("confirm_seconds", "10 to 3600"));
    }
    api.check_protocols(&api.store.candidate()?)?;
    let rev = match b.confirm_seconds {
        Some(s) if !CONFIRM_SECONDS.contains(&s) => {
            return Err(Problem::field("confirm_seconds", "10 to 3600"));
        }
        Some(s) => api.store.commit_confirmed(&author, Duration::from_secs(s))?,
        None => api.store.commit(&author)?,
    };
    api.changed.notify_one();
    ok(models::Committed { revision: rev.id, pending_confirm: api.store.pending_confirm()? })
}

/// `POST /config/confirm`.
pub(super) fn confirm(api: &Api, _: &Call<'_>) -> Reply {
    if !api.store.confirm()? {
        return Err(Problem::conflict("nothing-pending", "no commit waits for its confirmation"));
    }
    ok(models::Confirmed { confirmed: true })
}

/// `POST /config/rollback`: an earlier revision committed again.
pub(super) fn rollback(api: &Api, call: &Call<'_>) -> Reply {
    let b: models::Rollback = call.body()?;
    api.check_protocols(&api.store.revision(b.revision)?.config)?;
    let rev = api.store.rollback_to(b.revision, &call.caller().author(b.message))?;
    api.changed.notify_one();
    ok(models::RevisionRef { revision: rev.id })
}

/// `GET /config/revisions`.
pub(super) fn revisions(api: &Api, _: &Call<'_>) -> Reply {
    let history = api.store.history()?.into_iter();
    ok(history
        .map(|(id, at_ms, author)| models::RevisionInfo { id, at_ms, author })
        .collect::<Vec<_>>())
}

/// `GET /config/revisions/{id}`.
pub(super) fn revision(api: &Api, call: &Call<'_>) -> Reply {
    let id = call.param();
    let id: u64 =
        id.parse().map_err(|_| Problem::field("id", format!("{id:?} is not a number")))?;
    let secrets = with_secrets(api, call)?;
    let mut rev = api.store.revision(id)?;
    rev.config = shown(rev.config, secrets);
    ok(rev)
}

/// `GET /config/export`: the running configuration as a file (`?secrets=true` as
/// `GET /config`; a redacted file imported again keeps the router's secrets).
pub(super) fn export(api: &Api, call: &Call<'_>) -> Reply {
    let secrets = with_secrets(api, call)?;
    Ok(Answer::Text("application/json", api.store.export(secrets)?))
}

/// `POST /config/import?message=M`: a configuration file, committed.
pub(super) fn import(api: &Api, call: &Call<'_>) -> Reply {
    let text =
        std::str::from_utf8(&call.request.body).map_err(|_| Problem::field("body", "not UTF-8"))?;
    let message = call.query("message").unwrap_or("import");
    let mut config = sluice_store::parse_config(text)?;
    api.store.restore_secrets(&mut config, false)?;
    check_whole(api, &config)?;
    api.check_protocols(&config)?;
    let rev = api.store.import_config(&config, &call.caller().author(message))?;
    api.changed.notify_one();
    ok(models::RevisionRef { revision: rev.id })
}
