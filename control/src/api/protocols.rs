//! The routing daemon's protocols (`GET /protocols`), read from BIRD's control socket; and the
//! check a commit changing `protocols` passes first (BIRD's `configure check`).

use super::{
    Api, Problem,
    http::{Call, Reply, ok},
    models,
};
use crate::bird::BirdError;

/// `GET /protocols`.
pub(super) fn list(api: &Api, _: &Call<'_>) -> Reply {
    let Some(bird) = &api.bird else {
        return Err(Problem::unavailable(
            "no-routing-daemon",
            "the router runs no routing daemon (the daemon's --bird option)",
        ));
    };
    match bird.protocols() {
        Ok(protocols) => ok(models::Protocols { protocols }),
        Err(e) => Err(Problem::unavailable(
            "routing-daemon-down",
            format!("the routing daemon does not answer (it is restarted when it dies): {e}"),
        )),
    }
}

impl Api {
    /// Checks `config`'s routing protocols with BIRD when they differ from the running ones:
    /// BIRD's refusal is a 422 naming `protocols` with BIRD's message, and nothing is
    /// committed. Without a routing daemon, nothing to check.
    pub(super) fn check_protocols(&self, config: &models::Config) -> Result<(), Problem> {
        let Some(bird) = &self.bird else { return Ok(()) };
        if self.store.config()?.protocols == config.protocols {
            return Ok(());
        }
        match bird.check(&config.protocols) {
            Ok(()) => Ok(()),
            Err(BirdError::Refused(message)) => Err(Problem::field(
                "protocols",
                format!("the routing daemon (BIRD) refused the configuration: {message}"),
            )),
            Err(e) => Err(Problem::unavailable(
                "routing-daemon",
                format!("the routing daemon could not check the configuration: {e}"),
            )),
        }
    }
}
