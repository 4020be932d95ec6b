//! The authorization decision, measured.
//!
//! Policy: 1,000 tenants × 20 principals × 5 bindings each (100,000 bindings, 4 of the 20
//! principals being groups or service accounts, with group memberships and 3 custom roles per
//! tenant), plus 200 resource-scoped bindings and 3 platform admins.
//!
//! Reported, for allowed and denied decisions:
//! - **raw Casbin, one tenant**: `Enforcer::enforce` on a plain Casbin enforcer holding one
//!   tenant's policy plus the built-in roles, with the straightforward model (one `p` line per
//!   binding, ~100 lines: the issue's reference is 30–70 µs with ~120 lines) and with
//!   `policy/model.conf` (one `p` line per distinct role-on-scope);
//! - **raw Casbin, whole policy**: every binding in one enforcer, one line each (what a naive
//!   setup pays; a handful of samples);
//! - **cold**: the first decision for a key on the engine (Casbin, per-tenant enforcers);
//! - **warm**: the same keys again (the decision cache);
//! - plus the engine's load time and resident memory.
//!
//! A custom loop times every decision and prints median / p99 / max; criterion then gives its
//! own estimates of the mean per decision. Run: `cargo bench -p platform-policy`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use casbin::{CoreApi, DefaultModel, Enforcer, MgmtApi};
use criterion::Criterion;
use platform_policy::{
    Binding, CustomRole, EngineOptions, MODEL_CONF, Membership, PolicyEngine, PolicySnapshot,
    builtin_roles,
};

const TENANTS: usize = 1_000;
const PRINCIPALS: usize = 20;
const BINDINGS_EACH: usize = 5;
const SCOPED: usize = 200;

/// Roles a principal's bindings cycle through (custom roles are per tenant).
const ROLE_POOL: [&str; 7] = [
    "viewer",
    "r0",
    "developer",
    "r1",
    "secret-admin",
    "r2",
    "deployer",
];

fn principal(t: usize, i: usize) -> String {
    match i {
        0..=15 => format!("user:t{t}-u{i}"),
        16 | 17 => format!("serviceAccount:tenants/t{t}/serviceAccounts/sa{i}"),
        _ => format!("group:tenants/t{t}/groups/g{i}"),
    }
}

fn role_name(t: usize, role: &str) -> String {
    if role.starts_with('r') {
        format!("tenants/t{t}/roles/{role}")
    } else {
        role.to_owned()
    }
}

fn snapshot() -> PolicySnapshot {
    let custom_perms = [
        [
            "catalog.entities.get",
            "catalog.entities.list",
            "insights.doraMetrics.get",
        ],
        [
            "environments.environments.get",
            "environments.environments.lock",
            "environments.environments.unlock",
        ],
        [
            "audit.auditEvents.list",
            "audit.auditEvents.get",
            "iam.roles.list",
        ],
    ];
    let mut snap = PolicySnapshot::default();
    for t in 0..TENANTS {
        for (k, perms) in custom_perms.iter().enumerate() {
            snap.custom_roles.push(CustomRole {
                name: format!("tenants/t{t}/roles/r{k}"),
                permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
            });
        }
        for i in 0..PRINCIPALS {
            for k in 0..BINDINGS_EACH {
                snap.bindings.push(Binding {
                    principal: principal(t, i),
                    tenant: Some(format!("t{t}")),
                    scope: String::new(),
                    role: role_name(t, ROLE_POOL[(i + k) % ROLE_POOL.len()]),
                });
            }
        }
        // Users 10..14 are members of group 18, users 15 and the service accounts of group 19.
        for (member, group) in [
            (10, 18),
            (11, 18),
            (12, 18),
            (13, 18),
            (14, 18),
            (15, 19),
            (16, 19),
            (17, 19),
        ] {
            snap.memberships.push(Membership {
                tenant: format!("t{t}"),
                member: principal(t, member),
                group: principal(t, group),
            });
        }
    }
    for n in 0..SCOPED {
        let t = n * (TENANTS / SCOPED);
        snap.bindings.push(Binding {
            principal: format!("user:t{t}-scoped{n}"),
            tenant: Some(format!("t{t}")),
            scope: format!("tenants/t{t}/environments/prod"),
            role: "deployer".to_owned(),
        });
    }
    for n in 0..3 {
        snap.bindings.push(Binding {
            principal: format!("user:admin{n}"),
            tenant: None,
            scope: String::new(),
            role: "platform-admin".to_owned(),
        });
    }
    snap
}

/// One decision to make: (principal, tenant, resource, permission).
type Request = (String, String, String, &'static str);

/// `count` distinct requests, allowed or denied by the policy; `salt` makes the resources (so
/// the cache keys) distinct between calls.
fn requests(count: usize, allowed: bool, salt: &str) -> Vec<Request> {
    (0..count)
        .map(|n| {
            let t = (n * 7919) % TENANTS;
            match (allowed, n % 4) {
                // A user holding viewer directly (every user binds viewer through ROLE_POOL
                // rotation when (i + k) % 7 == 0 for some k, e.g. i = 0..3).
                (true, 0) => (
                    principal(t, n % 3),
                    format!("t{t}"),
                    format!("tenants/t{t}/entities/c{n}{salt}"),
                    "catalog.entities.get",
                ),
                // Through a group: users 10..14 are in group 18, which holds deployer.
                (true, 1) => (
                    principal(t, 10 + n % 5),
                    format!("t{t}"),
                    format!("tenants/t{t}/environments/e{n}{salt}"),
                    "deployments.deployments.createProduction",
                ),
                // Through a custom role (r1: environments lock).
                (true, 2) => (
                    principal(t, 0),
                    format!("t{t}"),
                    format!("tenants/t{t}/environments/e{n}{salt}"),
                    "environments.environments.lock",
                ),
                // A resource-scoped binding.
                (true, _) => {
                    let s = n % SCOPED;
                    let t = s * (TENANTS / SCOPED);
                    (
                        format!("user:t{t}-scoped{s}"),
                        format!("t{t}"),
                        format!("tenants/t{t}/environments/prod/d{n}{salt}"),
                        "deployments.deployments.create",
                    )
                }
                // Nobody holds admin: role bindings cannot be created.
                (false, 0) => (
                    principal(t, n % PRINCIPALS),
                    format!("t{t}"),
                    format!("tenants/t{t}/roleBindings/b{n}{salt}"),
                    "iam.roleBindings.create",
                ),
                // A principal of another tenant.
                (false, 1) => (
                    principal((t + 1) % TENANTS, 0),
                    format!("t{t}"),
                    format!("tenants/t{t}/entities/c{n}{salt}"),
                    "catalog.entities.get",
                ),
                // A resource-scoped deployer, outside its scope.
                (false, 2) => {
                    let s = n % SCOPED;
                    let t = s * (TENANTS / SCOPED);
                    (
                        format!("user:t{t}-scoped{s}"),
                        format!("t{t}"),
                        format!("tenants/t{t}/environments/prod2/d{n}{salt}"),
                        "deployments.deployments.create",
                    )
                }
                // An unknown user.
                (false, _) => (
                    format!("user:stranger{n}"),
                    format!("t{t}"),
                    format!("tenants/t{t}/environments/e{n}{salt}"),
                    "environments.environments.get",
                ),
            }
        })
        .collect()
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| {
        samples
            .get(((n as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Stats {
        median: at(0.5),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
        n,
    }
}

fn print(label: &str, s: &Stats) {
    println!(
        "  {label:<44} median {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}  (n = {})",
        s.median, s.p99, s.max, s.n
    );
}

fn time_each(
    requests: &[Request],
    expected: bool,
    mut decide: impl FnMut(&Request) -> bool,
) -> Stats {
    let mut samples = Vec::with_capacity(requests.len());
    for r in requests {
        let start = Instant::now();
        let allowed = decide(r);
        samples.push(start.elapsed());
        assert_eq!(allowed, expected, "{r:?}");
    }
    stats(samples)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The straightforward model: one `p` line per binding (what the issue's "raw Casbin" figure
/// measures), kept here as the baseline.
const NAIVE_MODEL: &str = r#"
[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = sub, dom, scope, role
[role_definition]
g = _, _, _
g2 = _, _, _
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = (p.dom == r.dom || p.dom == "*") && (p.sub == r.sub || g(r.sub, p.sub, r.dom)) && scopeCovers(p.scope, r.obj) && (g2(p.role, r.act, "*") || g2(p.role, r.act, r.dom))
"#;

/// A plain Casbin enforcer (Casbin's own role manager, the built-in roles as `g2` lines in
/// domain `*`) holding `snap`: with `naive`, one `p` line per binding; otherwise the lines of
/// `policy/model.conf` (grants and links), as the engine's shards hold them.
async fn raw_enforcer(snap: &PolicySnapshot, naive: bool) -> Enforcer {
    let text = if naive { NAIVE_MODEL } else { MODEL_CONF };
    let model = DefaultModel::from_str(text).await.expect("model");
    let mut e = Enforcer::new(model, ()).await.expect("enforcer");
    e.add_function(
        "scopeCovers",
        casbin::function_map::OperatorFunction::Arg2(|s, r| {
            let (s, r) = (s.to_string(), r.to_string());
            platform_policy::scope_covers(&s, &r).into()
        }),
    );
    let mut g2: Vec<Vec<String>> = builtin_roles()
        .iter()
        .flat_map(|r| {
            r.permissions
                .iter()
                .map(move |p| vec![r.id.clone(), p.clone(), "*".to_owned()])
        })
        .collect();
    for role in &snap.custom_roles {
        let tenant = platform_policy::tenant_of(&role.name)
            .unwrap_or_default()
            .to_owned();
        g2.extend(
            role.permissions
                .iter()
                .map(|p| vec![role.name.clone(), p.clone(), tenant.clone()]),
        );
    }
    let mut g: Vec<Vec<String>> = snap
        .memberships
        .iter()
        .map(|m| vec![m.member.clone(), m.group.clone(), m.tenant.clone()])
        .collect();
    let mut p: Vec<Vec<String>> = Vec::new();
    let mut grants = std::collections::HashSet::new();
    for b in &snap.bindings {
        let dom = b.tenant.clone().unwrap_or_else(|| "*".into());
        if naive {
            p.push(vec![
                b.principal.clone(),
                dom,
                b.scope.clone(),
                b.role.clone(),
            ]);
        } else {
            let grant = format!("grant:{}@{}", b.role, b.scope);
            g.push(vec![b.principal.clone(), grant.clone(), dom.clone()]);
            if grants.insert((grant.clone(), dom.clone())) {
                p.push(vec![grant, dom, b.scope.clone(), b.role.clone()]);
            }
        }
    }
    e.add_policies(p).await.expect("p");
    e.add_named_grouping_policies("g", g).await.expect("g");
    e.add_named_grouping_policies("g2", g2).await.expect("g2");
    e
}

fn tenant_slice(snap: &PolicySnapshot, tenant: &str) -> PolicySnapshot {
    let prefix = format!("tenants/{tenant}/");
    PolicySnapshot {
        bindings: snap
            .bindings
            .iter()
            .filter(|b| b.tenant.as_deref() == Some(tenant) || b.tenant.is_none())
            .cloned()
            .collect(),
        memberships: snap
            .memberships
            .iter()
            .filter(|m| m.tenant == tenant)
            .cloned()
            .collect(),
        custom_roles: snap
            .custom_roles
            .iter()
            .filter(|r| r.name.starts_with(&prefix))
            .cloned()
            .collect(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let snap = snapshot();
    let lines = snap.bindings.len()
        + snap.memberships.len()
        + snap
            .custom_roles
            .iter()
            .map(|r| r.permissions.len())
            .sum::<usize>();
    println!(
        "\npolicy: {} bindings ({} resource-scoped), {} memberships, {} custom roles; {lines} policy lines",
        snap.bindings.len(),
        SCOPED,
        snap.memberships.len(),
        snap.custom_roles.len()
    );

    let input = snap.clone();
    let rss_before = rss_mib();
    let start = Instant::now();
    let engine = runtime.block_on(PolicyEngine::new(input)).expect("engine");
    let load = start.elapsed();
    let rss_after = rss_mib();
    println!(
        "engine: loaded in {load:.2?}; resident memory +{:.1} MiB ({rss_before:.1} → {rss_after:.1} MiB)",
        rss_after - rss_before
    );

    // Raw Casbin on one tenant's lines, with the straightforward model and with ours.
    let one = tenant_slice(&snap, "t5");
    let raw_naive = runtime.block_on(raw_enforcer(&one, true));
    let raw_grants = runtime.block_on(raw_enforcer(&one, false));
    let p_lines = |e: &Enforcer| e.get_policy().len();
    let t5_allowed: Vec<Request> = (0..2000)
        .map(|n| match n % 3 {
            0 => (
                principal(5, n % 3),
                "t5".into(),
                format!("tenants/t5/entities/c{n}"),
                "catalog.entities.get",
            ),
            1 => (
                principal(5, 10 + n % 5),
                "t5".into(),
                format!("tenants/t5/environments/e{n}"),
                "deployments.deployments.createProduction",
            ),
            _ => (
                principal(5, 0),
                "t5".into(),
                format!("tenants/t5/environments/e{n}"),
                "environments.environments.lock",
            ),
        })
        .collect();
    let t5_denied: Vec<Request> = (0..2000)
        .map(|n| match n % 3 {
            0 => (
                principal(5, n % PRINCIPALS),
                "t5".into(),
                format!("tenants/t5/roleBindings/b{n}"),
                "iam.roleBindings.create",
            ),
            1 => (
                principal(6, 0),
                "t5".into(),
                format!("tenants/t5/entities/c{n}"),
                "catalog.entities.get",
            ),
            _ => (
                format!("user:stranger{n}"),
                "t5".into(),
                format!("tenants/t5/environments/e{n}"),
                "environments.environments.get",
            ),
        })
        .collect();
    let enforce = |e: &Enforcer, r: &Request| {
        e.enforce((r.0.as_str(), r.1.as_str(), r.2.as_str(), r.3))
            .expect("enforce")
    };
    println!("\nper-decision latency (custom loop, every decision timed):");
    let naive_lines = p_lines(&raw_naive);
    let grant_lines = p_lines(&raw_grants);
    for (label, e) in [
        (
            format!("one p line per binding, {naive_lines} p lines"),
            &raw_naive,
        ),
        (format!("model.conf, {grant_lines} p lines"), &raw_grants),
    ] {
        print(
            &format!("raw Casbin, tenant t5 ({label}), allowed"),
            &time_each(&t5_allowed, true, |r| enforce(e, r)),
        );
        print(
            &format!("raw Casbin, tenant t5 ({label}), denied"),
            &time_each(&t5_denied, false, |r| enforce(e, r)),
        );
    }
    print(
        "engine cold (first decision per key), tenant t5, allowed",
        &time_each(&t5_allowed, true, |r| {
            engine.is_allowed(&r.0, Some(&r.1), &r.2, r.3)
        }),
    );
    print(
        "engine cold (first decision per key), tenant t5, denied",
        &time_each(&t5_denied, false, |r| {
            engine.is_allowed(&r.0, Some(&r.1), &r.2, r.3)
        }),
    );

    // Raw Casbin with the whole policy in one enforcer (one p line per binding): a few samples.
    {
        let start = Instant::now();
        let raw_all = runtime.block_on(raw_enforcer(&snap, true));
        let built = start.elapsed();
        let allowed: Vec<Request> = t5_allowed.iter().skip(1).step_by(400).cloned().collect();
        let denied: Vec<Request> = t5_denied.iter().skip(1).step_by(400).cloned().collect();
        let lines = p_lines(&raw_all);
        print(
            &format!("raw Casbin, whole policy in one enforcer ({lines} p lines), allowed"),
            &time_each(&allowed, true, |r| enforce(&raw_all, r)),
        );
        print(
            "raw Casbin, whole policy in one enforcer, denied",
            &time_each(&denied, false, |r| enforce(&raw_all, r)),
        );
        println!("  (that enforcer took {built:.1?} to build)");
    }

    // The engine: cold (first decision for each key), then warm (the same keys again).
    let allowed = requests(4000, true, "");
    let denied = requests(4000, false, "");
    let decide = |r: &Request| engine.is_allowed(&r.0, Some(&r.1), &r.2, r.3);
    print(
        "engine cold (first decision per key), allowed",
        &time_each(&allowed, true, decide),
    );
    print(
        "engine cold (first decision per key), denied",
        &time_each(&denied, false, decide),
    );
    let warm = |requests: &[Request], expected: bool| {
        let mut samples = Vec::new();
        for _ in 0..10 {
            for r in requests {
                let start = Instant::now();
                let a = decide(r);
                samples.push(start.elapsed());
                assert_eq!(a, expected);
            }
        }
        stats(samples)
    };
    print("engine warm (cached), allowed", &warm(&allowed, true));
    print("engine warm (cached), denied", &warm(&denied, false));
    println!(
        "  (decision cache: {} entries)\n",
        engine.cached_decisions()
    );

    // Criterion's estimates.
    let uncached = runtime
        .block_on(PolicyEngine::with_options(
            snap.clone(),
            EngineOptions { cache_capacity: 0 },
        ))
        .expect("engine");
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    {
        let mut group = c.benchmark_group("authorization");
        for (name, reqs, expected) in [("allowed", &allowed, true), ("denied", &denied, false)] {
            let mut i = 0usize;
            group.bench_function(format!("warm/{name}"), |b| {
                b.iter(|| {
                    i = (i + 1) % reqs.len();
                    let r = &reqs[i];
                    let a = engine.is_allowed(black_box(&r.0), Some(&r.1), &r.2, r.3);
                    debug_assert_eq!(a, expected);
                    a
                })
            });
            let mut i = 0usize;
            group.bench_function(format!("cold/{name}"), |b| {
                b.iter(|| {
                    i = (i + 1) % reqs.len();
                    let r = &reqs[i];
                    uncached.is_allowed(black_box(&r.0), Some(&r.1), &r.2, r.3)
                })
            });
        }
        for (name, e) in [("naive", &raw_naive), ("model-conf", &raw_grants)] {
            for (kind, reqs) in [("allowed", &t5_allowed), ("denied", &t5_denied)] {
                let mut i = 0usize;
                group.bench_function(format!("raw-casbin-t5-{name}/{kind}"), |b| {
                    b.iter(|| {
                        i = (i + 1) % reqs.len();
                        enforce(e, black_box(&reqs[i]))
                    })
                });
            }
        }
        group.finish();
    }
    c.final_summary();
}
