//! What the operator may do in the Kubernetes API, in one place. The Helm chart's
//! ClusterRole (or per-namespace Roles) and the Role in its own namespace are generated
//! from [`RULES`] (`crdgen --write` writes `charts/cellbus/files/operator-rules.yaml`),
//! and the tests' mock API server refuses every request these rules do not grant, so a
//! new call the chart does not grant fails the tests before it fails in a cluster.

use serde::Serialize;

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace the operator watches (all of them, unless `--watch-namespace`).
    Watched,
    /// Only the operator's own namespace.
    Own,
}

/// One RBAC rule: `verbs` on `resources` of the API group `group` (`""` is the core group).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub scope: Scope,
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Every permission the operator needs, and no more.
pub const RULES: &[Rule] = &[
    // The controllers watch Cells and CellPools; the finalizer is added and removed with
    // a JSON patch of the Cell.
    Rule {
        scope: Scope::Watched,
        group: "cellbus.io",
        resources: &["cells"],
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        scope: Scope::Watched,
        group: "cellbus.io",
        resources: &["cellpools"],
        verbs: &["list", "watch"],
    },
    Rule {
        scope: Scope::Watched,
        group: "cellbus.io",
        resources: &["cells/status", "cellpools/status"],
        verbs: &["patch"],
    },
    // Never called: the API server's OwnerReferencesPermissionEnforcement admission asks
    // for it when a child (a pool's Deployment, a Cell's database Secret) names its owner
    // with blockOwnerDeletion.
    Rule {
        scope: Scope::Watched,
        group: "cellbus.io",
        resources: &["cells/finalizers", "cellpools/finalizers"],
        verbs: &["update"],
    },
    // A pool's children, applied server-side when the live object lacks a wanted field.
    // Deployments are watched so a pool's status follows its pods.
    Rule {
        scope: Scope::Watched,
        group: "apps",
        resources: &["deployments"],
        verbs: &["get", "list", "watch", "patch"],
    },
    Rule {
        scope: Scope::Watched,
        group: "",
        resources: &["serviceaccounts", "services"],
        verbs: &["get", "patch"],
    },
    // A PodDisruptionBudget only while the pool has more than one replica.
    Rule {
        scope: Scope::Watched,
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["get", "patch", "delete"],
    },
    // The Role (and its binding) letting a pool's pods read their cells' database Secrets;
    // removed when no cell of the pool has a database.
    Rule {
        scope: Scope::Watched,
        group: "rbac.authorization.k8s.io",
        resources: &["roles", "rolebindings"],
        verbs: &["get", "patch", "delete"],
    },
    // Cells' database Secrets `{cell}-db`: read to see whether one was lost, written with a
    // new password. Holding `get` is also what lets the operator grant it in a Role.
    Rule {
        scope: Scope::Watched,
        group: "",
        resources: &["secrets"],
        verbs: &["get", "patch"],
    },
    // Trusted signing keys and authorities a pool's `trust.from` names.
    Rule {
        scope: Scope::Watched,
        group: "",
        resources: &["configmaps"],
        verbs: &["get"],
    },
    Rule {
        scope: Scope::Watched,
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    // Leader election.
    Rule {
        scope: Scope::Own,
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
];

/// One request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    /// `cells`, or `cells/status` for a subresource.
    pub resource: String,
}

impl Access {
    /// What `method` on `path` (with `query`, the part after `?`) asks of RBAC; `None` for
    /// paths that are not resources (discovery, `/version`).
    pub fn of_request(method: &str, path: &str, query: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest = match parts.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            _ => return None,
        };
        let group = match parts[0] {
            "apis" => parts[1].to_owned(),
            _ => String::new(),
        };
        let rest = match rest {
            ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
            rest => rest,
        };
        let (resource, named) = match rest {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            [resource, _name, subresource] => (format!("{resource}/{subresource}"), true),
            _ => return None,
        };
        let watching = query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1");
        let verb = match (method, named) {
            ("GET", _) if watching => "watch",
            ("GET", true) => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        Some(Self {
            verb,
            group,
            resource,
        })
    }

    /// Whether some rule grants it.
    pub fn is_granted(&self) -> bool {
        RULES.iter().any(|rule| {
            rule.group == self.group
                && rule.resources.contains(&self.resource.as_str())
                && rule.verbs.contains(&self.verb)
        })
    }
}

/// A rule as it appears in a Role or ClusterRole.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRule {
    api_groups: [&'static str; 1],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
}

/// The rules for the chart, split by scope: `watched` for the ClusterRole (or the Role of
/// each watched namespace), `own` for the Role of the operator's namespace.
pub fn chart_rules_yaml() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    #[derive(Serialize)]
    struct ChartRules {
        watched: Vec<PolicyRule>,
        own: Vec<PolicyRule>,
    }
    let of = |scope| {
        RULES
            .iter()
            .filter(|rule| rule.scope == scope)
            .map(|rule| PolicyRule {
                api_groups: [rule.group],
                resources: rule.resources,
                verbs: rule.verbs,
            })
            .collect()
    };
    Ok(serde_saphyr::to_string(&ChartRules {
        watched: of(Scope::Watched),
        own: of(Scope::Own),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::list_in_all_namespaces(
        "GET",
        "/apis/cellbus.io/v1alpha1/cells",
        "",
        "list",
        "cellbus.io",
        "cells"
    )]
    #[case::watch(
        "GET",
        "/apis/cellbus.io/v1alpha1/cellpools",
        "watch=true&resourceVersion=1",
        "watch",
        "cellbus.io",
        "cellpools"
    )]
    #[case::list_in_a_namespace(
        "GET",
        "/apis/apps/v1/namespaces/team/deployments",
        "labelSelector=a",
        "list",
        "apps",
        "deployments"
    )]
    #[case::get_core(
        "GET",
        "/api/v1/namespaces/team/secrets/visits-db",
        "",
        "get",
        "",
        "secrets"
    )]
    #[case::status_patch(
        "PATCH",
        "/apis/cellbus.io/v1alpha1/namespaces/team/cells/echo/status",
        "fieldManager=x",
        "patch",
        "cellbus.io",
        "cells/status"
    )]
    #[case::create(
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
        "",
        "create",
        "coordination.k8s.io",
        "leases"
    )]
    #[case::update(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/ops/leases/cellbus-operator",
        "",
        "update",
        "coordination.k8s.io",
        "leases"
    )]
    #[case::delete(
        "DELETE",
        "/apis/policy/v1/namespaces/team/poddisruptionbudgets/p",
        "",
        "delete",
        "policy",
        "poddisruptionbudgets"
    )]
    #[case::delete_collection(
        "DELETE",
        "/api/v1/namespaces/team/secrets",
        "",
        "deletecollection",
        "",
        "secrets"
    )]
    #[case::namespaces_themselves("GET", "/api/v1/namespaces/team", "", "get", "", "namespaces")]
    fn requests_map_to_verbs_and_resources(
        #[case] method: &str,
        #[case] path: &str,
        #[case] query: &str,
        #[case] verb: &str,
        #[case] group: &str,
        #[case] resource: &str,
    ) {
        let access = Access::of_request(method, path, query).unwrap();
        assert_eq!(
            (access.verb, access.group.as_str(), access.resource.as_str()),
            (verb, group, resource)
        );
    }

    #[rstest]
    #[case::version("/version")]
    #[case::discovery("/apis")]
    #[case::too_deep("/apis/cellbus.io/v1alpha1/namespaces/team/cells/echo/status/extra")]
    fn other_paths_are_not_resources(#[case] path: &str) {
        assert_eq!(Access::of_request("GET", path, ""), None);
    }

    #[test]
    fn only_what_a_rule_lists_is_granted() {
        let granted = |method, path| Access::of_request(method, path, "").unwrap().is_granted();
        assert!(granted("PATCH", "/api/v1/namespaces/t/secrets/visits-db"));
        assert!(!granted("DELETE", "/api/v1/namespaces/t/secrets/visits-db"));
        assert!(!granted("GET", "/api/v1/namespaces/t/secrets"));
        assert!(granted("GET", "/api/v1/namespaces/t/configmaps/x"));
        assert!(!granted("GET", "/api/v1/namespaces/t/configmaps"));
        assert!(!granted(
            "PATCH",
            "/apis/cellbus.io/v1alpha1/namespaces/t/cellpools/p"
        ));
    }

    #[test]
    fn the_chart_rules_split_by_scope() {
        let yaml = chart_rules_yaml().unwrap();
        let rules: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            rules["own"],
            serde_json::json!([{
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "create", "update"]
            }])
        );
        assert_eq!(rules["watched"].as_array().unwrap().len(), RULES.len() - 1);
    }
}
