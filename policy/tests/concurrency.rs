//! Many threads check while bindings and memberships are added and removed: a check that starts
//! after a removal returned never allows, and one that starts after an addition returned never
//! denies (no stale cache entry either way).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use platform_policy::{Binding, Membership, PolicyEngine, PolicySnapshot};

fn binding(principal: &str, tenant: &str, scope: &str, role: &str) -> Binding {
    Binding {
        principal: principal.to_owned(),
        tenant: Some(tenant.to_owned()),
        scope: scope.to_owned(),
        role: role.to_owned(),
    }
}

/// Phases of one toggled grant: 4k+1 adding, 4k+2 granted, 4k+3 removing, 4k+4 revoked.
struct Toggle {
    phase: AtomicU64,
}

impl Toggle {
    fn new() -> Self {
        Self {
            phase: AtomicU64::new(0),
        }
    }
    fn step(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn revocation_is_seen_by_every_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut bindings = Vec::new();
    for t in 0..20 {
        for p in 0..10 {
            bindings.push(binding(
                &format!("user:u{p}"),
                &format!("t{t}"),
                "",
                if p % 2 == 0 { "viewer" } else { "developer" },
            ));
        }
    }
    bindings.push(binding("group:tenants/t0/groups/g", "t0", "", "deployer"));
    let engine = Arc::new(
        runtime
            .block_on(PolicyEngine::new(PolicySnapshot {
                bindings,
                ..PolicySnapshot::default()
            }))
            .expect("loads"),
    );

    let direct = Arc::new(Toggle::new());
    let grouped = Arc::new(Toggle::new());
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));

    std::thread::scope(|scope| {
        for reader in 0..4 {
            let (engine, direct, grouped, stop, violations, checked) =
                (&engine, &direct, &grouped, &stop, &violations, &checked);
            scope.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    // The toggled direct binding: user:x developer on tenants/t1/environments/e.
                    let before = direct.phase.load(Ordering::SeqCst);
                    let allowed = engine.is_allowed(
                        "user:x",
                        Some("t1"),
                        "tenants/t1/environments/e/d",
                        "deployments.deployments.create",
                    );
                    let after = direct.phase.load(Ordering::SeqCst);
                    if before == after
                        && before > 0
                        && ((before % 4 == 0 && allowed) || (before % 4 == 2 && !allowed))
                    {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    // The toggled membership: user:y in group g (deployer) of t0.
                    let before = grouped.phase.load(Ordering::SeqCst);
                    let allowed = engine.is_allowed(
                        "user:y",
                        Some("t0"),
                        "tenants/t0/environments/prod",
                        "deployments.deployments.createProduction",
                    );
                    let after = grouped.phase.load(Ordering::SeqCst);
                    if before == after
                        && before > 0
                        && ((before % 4 == 0 && allowed) || (before % 4 == 2 && !allowed))
                    {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    // Background traffic on stable keys, which must stay right throughout.
                    let p = (i + reader) % 10;
                    let t = i % 20;
                    let expected = p % 2 == 1;
                    if engine.is_allowed(
                        &format!("user:u{p}"),
                        Some(&format!("t{t}")),
                        &format!("tenants/t{t}"),
                        "catalog.entities.create",
                    ) != expected
                    {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    checked.fetch_add(3, Ordering::Relaxed);
                }
            });
        }

        let direct_binding = binding("user:x", "t1", "tenants/t1/environments/e", "developer");
        let member = Membership {
            tenant: "t0".into(),
            member: "user:y".into(),
            group: "group:tenants/t0/groups/g".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut rounds = 0;
        runtime.block_on(async {
            while Instant::now() < deadline || rounds < 50 {
                direct.step(); // adding
                engine.add_binding(&direct_binding).await.expect("add");
                direct.step(); // granted
                grouped.step();
                engine.add_membership(&member).await.expect("add");
                grouped.step();
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(200));
                direct.step(); // removing
                engine
                    .remove_binding(&direct_binding)
                    .await
                    .expect("remove");
                direct.step(); // revoked
                grouped.step();
                engine.remove_membership(&member).await.expect("remove");
                grouped.step();
                std::thread::sleep(Duration::from_micros(200));
                rounds += 1;
            }
        });
        stop.store(true, Ordering::SeqCst);
        assert!(rounds >= 50);
    });

    assert_eq!(violations.load(Ordering::SeqCst), 0, "stale decisions seen");
    assert!(checked.load(Ordering::Relaxed) > 1000, "the readers ran");
    // After the last removal returned, nobody is allowed.
    assert!(!engine.is_allowed(
        "user:x",
        Some("t1"),
        "tenants/t1/environments/e",
        "deployments.deployments.create"
    ));
    assert!(!engine.is_allowed(
        "user:y",
        Some("t0"),
        "tenants/t0",
        "deployments.deployments.createProduction"
    ));
}
