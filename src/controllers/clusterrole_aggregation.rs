//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` holds the
//! rules of every ClusterRole its selectors select (how `admin`, `edit` and `view` gain the
//! rules of roles labelled `rbac.authorization.k8s.io/aggregate-to-*`), as in Kubernetes.
//!
//! Invariant: an aggregated role's `rules` are recomputed from the cache each time (the
//! union in [`crate::apiserver::rbac::aggregated_rules`]), never edited in place; a change
//! to any ClusterRole looks at every aggregated one again (there are a handful).

use serde_json::json;

use super::owner::{key_of, ref_of};
use crate::apiserver::rbac::aggregated_rules;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{CLUSTERROLES, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{Frozen, Json};

pub struct ClusterRoleAggregation;

impl ClusterRoleAggregation {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 1] = [&CLUSTERROLES];
}

impl Reconciler for ClusterRoleAggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        if change.resource != &CLUSTERROLES {
            return vec![];
        }
        self.all(cache)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .list(&CLUSTERROLES)
            .iter()
            .filter(|r| r.get("aggregationRule").is_some_and(|a| !a.is_null()))
            .filter_map(key_of)
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&CLUSTERROLES, key);
        let Some(role) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        let Some(rules) = aggregated_rules(&role, &ctx.cache.list(&CLUSTERROLES)) else {
            return Ok(Action::Done);
        };
        if *role.get("rules").unwrap_or(Frozen::null()) == json!(rules) {
            return Ok(Action::Done);
        }
        let written = ctx
            .registry
            .modify(&r, Part::Main, |obj| obj["rules"] = json!(rules))
            .await;
        match written {
            Ok(obj) => ctx.wrote(&obj),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(Action::Done)
    }
}
