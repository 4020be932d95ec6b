//! Scorecards end to end, on SQLite and PostgreSQL: a bronze / silver / gold scorecard over four
//! Components with known catalog facts and a deployment history relative to now, evaluated one
//! entity at a time and as a listing (levels, each rule's outcome, "each level needs the ones
//! below", no-data rules, filters, sort and pages), then changed and evaluated again; the
//! definition's validation, etags, request ids, list filters, deletion and who may do what.

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::insights::v1 as ipb;
use tonic::Code;

use ipb::scorecard_rule::Check;

use crate::catalog::{import, setup};
use crate::deployments::{deploy_all_finished, environment, noop};
use crate::environments::field_of;
use crate::storage_test;
use crate::support::TestClient;

type Insights = ipb::insights_service_client::InsightsServiceClient<tonic::transport::Channel>;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;

fn insights(client: &TestClient) -> Insights {
    Insights::new(client.channel.clone())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

fn days(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n * 86_400,
        nanos: 0,
    }
}

fn rule(id: &str, level: &str, check: Check) -> ipb::ScorecardRule {
    ipb::ScorecardRule {
        id: id.into(),
        level: level.into(),
        check: Some(check),
        ..Default::default()
    }
}

fn prod_window(n: i64) -> Option<ipb::DeploymentWindow> {
    Some(ipb::DeploymentWindow {
        window: Some(days(n)),
        environments: vec!["tenants/acme/environments/prod".into()],
    })
}

/// The scorecard under test: bronze (an owner, a lifecycle), silver (a resolved owner, a
/// description, a runbook, deployed to production recently), gold (everything else).
fn definition() -> ipb::Scorecard {
    let levels = ["bronze", "silver", "gold"]
        .iter()
        .map(|id| ipb::ScorecardLevel {
            id: (*id).into(),
            ..Default::default()
        })
        .collect();
    let mut ttr = rule(
        "restores-fast",
        "gold",
        Check::TimeToRestore(ipb::TimeToRestoreCheck {
            max_median: Some(days(1)),
            window: None,
        }),
    );
    ttr.pass_without_data = true;
    let rules = vec![
        rule(
            "has-owner",
            "bronze",
            Check::HasOwner(ipb::HasOwnerCheck::default()),
        ),
        rule(
            "has-lifecycle",
            "bronze",
            Check::HasLifecycle(ipb::HasLifecycleCheck {
                allowed_values: vec!["Production".into(), "experimental".into()],
            }),
        ),
        rule(
            "owner-resolved",
            "silver",
            Check::HasOwner(ipb::HasOwnerCheck {
                require_resolved: true,
            }),
        ),
        rule(
            "has-description",
            "silver",
            Check::HasDescription(ipb::HasDescriptionCheck { min_length: 10 }),
        ),
        rule(
            "has-runbook",
            "silver",
            Check::HasLink(ipb::HasLinkCheck {
                r#type: "runbook".into(),
                url_prefix: "https://".into(),
            }),
        ),
        rule(
            "deployed-recently",
            "silver",
            Check::DeployedRecently(ipb::DeployedRecentlyCheck {
                within: prod_window(30),
            }),
        ),
        rule(
            "provides-api",
            "gold",
            Check::ProvidesApi(ipb::ProvidesApiCheck {
                require_resolved: true,
            }),
        ),
        rule(
            "low-failure-rate",
            "gold",
            Check::ChangeFailureRate(ipb::ChangeFailureRateCheck {
                max_rate: 0.25,
                window: None,
            }),
        ),
        rule(
            "weekly",
            "gold",
            Check::DeploymentFrequency(ipb::DeploymentFrequencyCheck {
                min_per_day: 0.05,
                window: prod_window(30),
            }),
        ),
        rule(
            "fast-lead",
            "gold",
            Check::LeadTime(ipb::LeadTimeCheck {
                max_median: Some(days(1)),
                window: None,
            }),
        ),
        ttr,
        rule(
            "medium-band",
            "gold",
            Check::DoraBand(ipb::DoraBandCheck {
                min_band: ipb::DoraPerformanceBand::Medium as i32,
                window: None,
            }),
        ),
        rule(
            "tier-1",
            "gold",
            Check::HasLabel(ipb::HasLabelCheck {
                key: "tier".into(),
                value: "1".into(),
            }),
        ),
        rule(
            "pagerduty",
            "gold",
            Check::HasAnnotation(ipb::HasAnnotationCheck {
                key: "pagerduty.com/service-id".into(),
                value: String::new(),
            }),
        ),
        rule(
            "java",
            "gold",
            Check::HasTag(ipb::HasTagCheck { tag: "java".into() }),
        ),
        rule(
            "uses-a-database",
            "gold",
            Check::HasRelation(ipb::HasRelationCheck {
                relation_type: "dependsOn".into(),
                min_count: 1,
                target_kind: "Resource".into(),
                require_resolved: true,
            }),
        ),
        rule(
            "custom-field",
            "gold",
            Check::Field(ipb::FieldCheck {
                field: "spec.costCenter".into(),
                operator: ipb::FieldOperator::Matches as i32,
                values: vec!["cc-[0-9]+".into()],
            }),
        ),
        rule(
            "owned-by-team-a",
            "gold",
            Check::Field(ipb::FieldCheck {
                field: "spec.owner".into(),
                operator: ipb::FieldOperator::In as i32,
                values: vec!["group:default/team-a".into()],
            }),
        ),
    ];
    ipb::Scorecard {
        display_name: "Production readiness".into(),
        levels,
        rules,
        labels: [("team".to_owned(), "platform".to_owned())].into(),
        ..Default::default()
    }
}

const CATALOG: &str = "\
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
---
apiVersion: backstage.io/v1alpha1
kind: API
metadata:
  name: orders-api
spec:
  type: openapi
  lifecycle: production
  owner: team-a
  definition: openapi
---
apiVersion: backstage.io/v1alpha1
kind: Resource
metadata:
  name: orders-db
spec:
  type: database
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: gold-svc
  title: Gold service
  description: Takes orders and keeps them.
  labels:
    tier: '1'
  annotations:
    pagerduty.com/service-id: P123
  tags: [java]
  links:
    - url: https://runbooks.example.com/gold
      title: Runbook
      type: runbook
spec:
  type: service
  lifecycle: production
  owner: team-a
  providesApis: [orders-api]
  dependsOn: ['resource:orders-db']
  costCenter: cc-42
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: silver-svc
  description: Sends the invoices out.
  links:
    - url: https://runbooks.example.com/silver
      icon: runbook
spec:
  type: service
  lifecycle: production
  owner: group:default/team-a
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: bronze-svc
spec:
  type: service
  lifecycle: experimental
  owner: ghost-team
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: none-svc
  description: Long enough description here.
  links:
    - url: https://runbooks.example.com/none
      type: Runbook
spec:
  type: service
  lifecycle: deprecated
  owner: team-a
";

/// Deployments to prod, relative to now: (component, state, days before now, lead time hours).
const HISTORY: [(&str, dpb::DeploymentState, i64, i64); 6] = [
    ("gold-svc", dpb::DeploymentState::Succeeded, 1, 2),
    ("gold-svc", dpb::DeploymentState::Succeeded, 3, 2),
    ("gold-svc", dpb::DeploymentState::Succeeded, 5, 2),
    // A failure restored three hours later: rate 1/2.
    ("silver-svc", dpb::DeploymentState::Failed, 4, 0),
    ("silver-svc", dpb::DeploymentState::Succeeded, 4, 1),
    ("none-svc", dpb::DeploymentState::Succeeded, 2, 1),
];

async fn seed(admin: &TestClient, pool: &sqlx::AnyPool) {
    let imported = import(
        admin,
        vec![cat::ImportSource {
            path: "catalog-info.yaml".into(),
            content: CATALOG.into(),
        }],
        "",
    )
    .await
    .expect("import");
    assert_eq!(imported.failed_count, 0, "{imported:?}");
    environment(admin, "prod", epb::EnvironmentType::Production, noop(), "").await;
    let ids = deploy_all_finished(admin, HISTORY.iter().map(|(c, ..)| (*c, "prod"))).await;
    let now = now_us();
    for (i, (_, state, days_ago, lead_hours)) in HISTORY.iter().enumerate() {
        let id = ids[i].rsplit('/').next().expect("id");
        // The restore comes three hours after the failure.
        let end = now - days_ago * DAY + if i == 4 { 3 * HOUR } else { 0 };
        sqlx::query(
            "UPDATE deployments SET state = $1, end_time_us = $2, commit_time_us = $3, create_time_us = $4 \
             WHERE tenant = 'acme' AND id = $5",
        )
        .bind(*state as i64)
        .bind(end)
        .bind(end - lead_hours * HOUR)
        .bind(end - HOUR)
        .bind(id)
        .execute(pool)
        .await
        .expect("fixture");
    }
}

async fn create(
    client: &TestClient,
    id: &str,
    scorecard: ipb::Scorecard,
) -> Result<ipb::Scorecard, tonic::Status> {
    insights(client)
        .create_scorecard(client.req(ipb::CreateScorecardRequest {
            parent: "tenants/acme".into(),
            scorecard_id: id.into(),
            scorecard: Some(scorecard),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn evaluate(
    client: &TestClient,
    entity: &str,
    scorecards: &[&str],
) -> Result<Vec<ipb::ScorecardEvaluation>, tonic::Status> {
    insights(client)
        .evaluate_entity(client.req(ipb::EvaluateEntityRequest {
            parent: "tenants/acme".into(),
            entity: entity.into(),
            scorecards: scorecards.iter().map(|s| (*s).to_owned()).collect(),
        }))
        .await
        .map(|r| r.into_inner().evaluations)
}

async fn evaluations(
    client: &TestClient,
    filter: &str,
    order_by: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ipb::ListScorecardEvaluationsResponse, tonic::Status> {
    insights(client)
        .list_scorecard_evaluations(client.req(ipb::ListScorecardEvaluationsRequest {
            parent: "tenants/acme/scorecards/readiness".into(),
            filter: filter.into(),
            order_by: order_by.into(),
            page_size,
            page_token: page_token.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

fn outcome(e: &ipb::ScorecardEvaluation, rule: &str) -> (ipb::RuleOutcome, bool, String) {
    let r = e
        .rule_results
        .iter()
        .find(|r| r.rule == rule)
        .unwrap_or_else(|| panic!("rule {rule} in {e:?}"));
    (
        ipb::RuleOutcome::try_from(r.outcome).expect("outcome"),
        r.passed,
        r.message.clone(),
    )
}

fn refs(list: &ipb::ListScorecardEvaluationsResponse) -> Vec<String> {
    list.evaluations
        .iter()
        .map(|e| {
            e.entity_ref
                .trim_start_matches("component:default/")
                .to_owned()
        })
        .collect()
}

storage_test!(
    scorecards_evaluate_each_level_from_catalog_and_deployments,
    |backend| async move {
        use ipb::RuleOutcome::{Failed, NoData, Passed};
        let (_db, server, admin) = setup(backend).await;
        seed(&admin, server.store.pool()).await;
        let created = create(&admin, "readiness", definition())
            .await
            .expect("create");
        assert_eq!(created.name, "tenants/acme/scorecards/readiness");
        assert!(!created.etag.is_empty() && !created.uid.is_empty());
        assert!(created.creator.starts_with("user:"), "{}", created.creator);

        // Gold: every rule passes; time to restore has no data and passes by its setting.
        let gold = evaluate(&admin, "gold-svc", &[]).await.expect("gold");
        assert_eq!(gold.len(), 1);
        let gold = &gold[0];
        assert_eq!(gold.entity_ref, "component:default/gold-svc");
        assert_eq!(
            gold.entity,
            "tenants/acme/entities/component/default/gold-svc"
        );
        assert_eq!(gold.entity_title, "Gold service");
        assert_eq!((gold.level.as_str(), gold.level_rank), ("gold", 3));
        assert_eq!(gold.next_level, "");
        assert_eq!(gold.score, 1.0, "{gold:?}");
        assert_eq!(outcome(gold, "restores-fast").0, NoData);
        assert!(outcome(gold, "restores-fast").1);
        let (o, _, message) = outcome(gold, "low-failure-rate");
        assert_eq!(o, Passed);
        assert!(
            message.contains("0.00") && message.contains("3 deployments"),
            "{message}"
        );
        let (_, _, message) = outcome(gold, "weekly");
        assert!(message.contains("0.100"), "3 in 30 days: {message}");
        assert!(outcome(gold, "fast-lead").2.contains("2.0 h"));
        assert!(
            outcome(gold, "medium-band").2.contains("MEDIUM"),
            "0.1/day is MEDIUM"
        );
        assert_eq!(
            outcome(gold, "has-owner").2,
            "owner is group:default/team-a"
        );
        assert_eq!(gold.level_results.len(), 3);
        assert!(gold.level_results.iter().all(|l| l.reached));

        // Silver: no API, and half of its deployments failed.
        let silver = &evaluate(&admin, "component:default/silver-svc", &[])
            .await
            .expect("silver")[0];
        assert_eq!(
            (silver.level.as_str(), silver.next_level.as_str()),
            ("silver", "gold")
        );
        assert_eq!(outcome(silver, "provides-api").0, Failed);
        let (o, passed, message) = outcome(silver, "low-failure-rate");
        assert_eq!((o, passed), (Failed, false));
        assert!(
            message.contains("0.50") && message.contains("> 0.25"),
            "{message}"
        );
        assert_eq!(
            outcome(silver, "has-runbook").0,
            Passed,
            "a link typed by its icon"
        );
        let (o, _, message) = outcome(silver, "restores-fast");
        assert_eq!(o, Passed);
        assert!(message.contains("3.0 h"), "{message}");
        let gold_level = &silver.level_results[2];
        assert!(!gold_level.all_rules_passed && !gold_level.reached);
        assert_eq!(gold_level.total_rules, 12);

        // Bronze: a dangling owner, no description, no deployments (no data fails by default).
        let bronze = &evaluate(&admin, "bronze-svc", &[]).await.expect("bronze")[0];
        assert_eq!((bronze.level.as_str(), bronze.level_rank), ("bronze", 1));
        let (o, passed, message) = outcome(bronze, "owner-resolved");
        assert_eq!((o, passed), (Failed, false));
        assert!(message.contains("group:default/ghost-team"), "{message}");
        let (o, passed, message) = outcome(bronze, "deployed-recently");
        assert_eq!((o, passed), (NoData, false));
        assert!(message.contains("no deployments"), "{message}");
        assert_eq!(outcome(bronze, "has-runbook").0, Failed);

        // None: its lifecycle is not allowed, so it reaches no level even though every silver
        // rule passes.
        let none = &evaluate(&admin, "none-svc", &[]).await.expect("none")[0];
        assert_eq!((none.level.as_str(), none.level_rank), ("", 0));
        assert_eq!(none.next_level, "bronze");
        assert!(!none.level_results[0].all_rules_passed);
        assert!(none.level_results[1].all_rules_passed);
        assert!(!none.level_results[1].reached);
        assert!(outcome(none, "has-lifecycle").2.contains("deprecated"));

        // The listing: default order level desc, then the reference; counts per level.
        let all = evaluations(&admin, "", "", 0, "").await.expect("list");
        assert_eq!(
            refs(&all),
            ["gold-svc", "silver-svc", "bronze-svc", "none-svc"]
        );
        assert_eq!(all.total_size, 4);
        let counts: Vec<(String, i32)> = all
            .level_counts
            .iter()
            .map(|c| (c.level.clone(), c.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("bronze".to_owned(), 1),
                ("silver".to_owned(), 1),
                ("gold".to_owned(), 1),
                (String::new(), 1)
            ]
        );
        for (filter, expected) in [
            ("level >= \"silver\"", vec!["gold-svc", "silver-svc"]),
            ("level = \"\"", vec!["none-svc"]),
            ("rules.has-runbook = \"FAILED\"", vec!["bronze-svc"]),
            ("rules.deployed-recently = \"NO_DATA\"", vec!["bronze-svc"]),
            ("score = 1", vec!["gold-svc"]),
            (
                "owner = \"team-a\" AND level < \"silver\"",
                vec!["none-svc"],
            ),
            (
                "labels.tier = \"1\" OR name = \"bronze-svc\"",
                vec!["gold-svc", "bronze-svc"],
            ),
            (
                "NOT spec.lifecycle = \"production\"",
                vec!["bronze-svc", "none-svc"],
            ),
        ] {
            let list = evaluations(&admin, filter, "", 0, "").await.expect(filter);
            assert_eq!(refs(&list), expected, "{filter}");
            assert_eq!(list.total_size as usize, expected.len(), "{filter}");
            assert_eq!(
                list.level_counts, all.level_counts,
                "counts ignore the filter"
            );
        }
        let by_score = evaluations(&admin, "", "score, entity desc", 0, "")
            .await
            .expect("by score");
        let scores: Vec<f64> = by_score.evaluations.iter().map(|e| e.score).collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
        for (filter, field) in [
            ("level = \"platinum\"", "filter"),
            ("rules.nope = \"PASSED\"", "filter"),
            ("rules.java = \"MAYBE\"", "filter"),
            ("score > high", "filter"),
            ("uid = \"x\"", "filter"),
        ] {
            let err = evaluations(&admin, filter, "", 0, "")
                .await
                .expect_err(filter);
            assert_eq!(err.code(), Code::InvalidArgument, "{filter}");
            assert_eq!(field_of(&err), field, "{filter}");
        }
        let err = evaluations(&admin, "", "color", 0, "")
            .await
            .expect_err("order");
        assert_eq!(err.code(), Code::InvalidArgument);

        // Pages of one: the same order, every entity once, then no token.
        let mut token = String::new();
        let mut paged = Vec::new();
        let mut pinned = None;
        loop {
            let page = evaluations(&admin, "", "", 1, &token).await.expect("page");
            assert_eq!(page.total_size, 4);
            // Every page is computed at the first page's time.
            let pinned = pinned.get_or_insert(page.evaluate_time);
            assert_eq!(page.evaluate_time, *pinned);
            paged.extend(refs(&page));
            if page.next_page_token.is_empty() {
                break;
            }
            if paged.len() == 1 {
                let wrong = evaluations(&admin, "score >= 0", "", 1, &page.next_page_token)
                    .await
                    .expect_err("a token of another query");
                assert_eq!(wrong.code(), Code::InvalidArgument);
            }
            token = page.next_page_token;
        }
        assert_eq!(paged, refs(&all));

        // A Resource: the scorecard applies to Components only.
        let db = evaluate(&admin, "resource:orders-db", &[])
            .await
            .expect("none apply");
        assert!(db.is_empty());
        let err = evaluate(
            &admin,
            "resource:orders-db",
            &["tenants/acme/scorecards/readiness"],
        )
        .await
        .expect_err("does not apply");
        assert_eq!(err.code(), Code::FailedPrecondition);
        let err = evaluate(&admin, "ghost", &[]).await.expect_err("no entity");
        assert_eq!(err.code(), Code::NotFound);
        let err = evaluate(&admin, "gold-svc", &["tenants/acme/scorecards/nope"])
            .await
            .expect_err("no scorecard");
        assert_eq!(err.code(), Code::NotFound);

        // Change the definition: silver-svc reaches gold once the gold rules it fails are
        // relaxed; a stale etag changes nothing.
        let mut changed = created.clone();
        changed.rules.retain(|r| {
            !matches!(
                r.id.as_str(),
                "provides-api"
                    | "tier-1"
                    | "pagerduty"
                    | "java"
                    | "uses-a-database"
                    | "custom-field"
                    | "weekly"
                    | "medium-band"
            )
        });
        for r in &mut changed.rules {
            if let Some(Check::ChangeFailureRate(c)) = &mut r.check {
                c.max_rate = 0.5;
            }
        }
        let update = |sc: ipb::Scorecard| ipb::UpdateScorecardRequest {
            scorecard: Some(sc),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["rules".into()],
            }),
            ..Default::default()
        };
        let updated = insights(&admin)
            .update_scorecard(admin.req(update(changed.clone())))
            .await
            .expect("update")
            .into_inner();
        assert_ne!(updated.etag, created.etag);
        assert_eq!(updated.display_name, "Production readiness");
        let stale = insights(&admin)
            .update_scorecard(admin.req(update(changed.clone())))
            .await
            .expect_err("stale etag");
        assert_eq!(stale.code(), Code::Aborted);
        let silver = &evaluate(&admin, "silver-svc", &[]).await.expect("again")[0];
        assert_eq!(silver.level, "gold", "{silver:?}");
        // A rule naming a level that does not exist cannot be written.
        changed.etag = updated.etag.clone();
        changed.rules[0].level = "platinum".into();
        let err = insights(&admin)
            .update_scorecard(admin.req(update(changed)))
            .await
            .expect_err("unknown level");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(&err), "scorecard.rules[0].level");

        server.stop().await;
    }
);

storage_test!(
    scorecard_definitions_are_validated_listed_and_deleted,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        environment(&admin, "prod", epb::EnvironmentType::Production, noop(), "").await;

        // Every mistake is named by its field, and nothing is written.
        let mut bad = definition();
        bad.levels.push(ipb::ScorecardLevel {
            id: "gold".into(),
            ..Default::default()
        });
        bad.rules[1].id = "has-owner".into();
        bad.rules[2].level = "platinum".into();
        bad.rules[3].check = None;
        bad.rules[7].check = Some(Check::ChangeFailureRate(ipb::ChangeFailureRateCheck {
            max_rate: 2.0,
            window: Some(ipb::DeploymentWindow {
                window: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                environments: vec!["tenants/other/environments/prod".into()],
            }),
        }));
        bad.rules[16].check = Some(Check::Field(ipb::FieldCheck {
            field: "spec.costCenter".into(),
            operator: ipb::FieldOperator::Matches as i32,
            values: vec!["cc-[".into()],
        }));
        bad.rules[15].check = Some(Check::HasRelation(ipb::HasRelationCheck {
            relation_type: "likes".into(),
            ..Default::default()
        }));
        bad.entity_filter = "kind = ".into();
        let err = create(&admin, "bad", bad).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument);
        let fields = field_of(&err);
        for field in [
            "scorecard.entity_filter",
            "scorecard.levels[3].id",
            "scorecard.rules[1].id",
            "scorecard.rules[2].level",
            "scorecard.rules[3].check",
            "scorecard.rules[7].change_failure_rate.max_rate",
            "scorecard.rules[7].change_failure_rate.window.window",
            "scorecard.rules[7].change_failure_rate.window.environments[0]",
            "scorecard.rules[15].has_relation.relation_type",
            "scorecard.rules[16].field.values[0]",
        ] {
            assert!(fields.split(',').any(|f| f == field), "{field} in {fields}");
        }
        let mut missing_env = definition();
        missing_env.rules[5].check = Some(Check::DeployedRecently(ipb::DeployedRecentlyCheck {
            within: Some(ipb::DeploymentWindow {
                window: None,
                environments: vec!["tenants/acme/environments/nowhere".into()],
            }),
        }));
        let err = create(&admin, "bad", missing_env)
            .await
            .expect_err("no env");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("nowhere"), "{}", err.message());
        let mut empty = definition();
        empty.rules.clear();
        assert_eq!(
            create(&admin, "bad", empty)
                .await
                .expect_err("no rules")
                .code(),
            Code::InvalidArgument
        );

        // validate_only writes nothing; request_id makes a retry return the first result.
        let dry = insights(&admin)
            .create_scorecard(admin.req(ipb::CreateScorecardRequest {
                parent: "tenants/acme".into(),
                scorecard_id: "readiness".into(),
                scorecard: Some(definition()),
                validate_only: true,
                ..Default::default()
            }))
            .await
            .expect("validate only")
            .into_inner();
        assert_eq!(dry.name, "tenants/acme/scorecards/readiness");
        let get = |name: &str| {
            let client = admin.clone();
            let name = name.to_owned();
            async move {
                insights(&client)
                    .get_scorecard(client.req(ipb::GetScorecardRequest { name }))
                    .await
            }
        };
        assert_eq!(
            get("tenants/acme/scorecards/readiness")
                .await
                .expect_err("dry")
                .code(),
            Code::NotFound
        );
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut uids = Vec::new();
        for _ in 0..2 {
            let sc = insights(&admin)
                .create_scorecard(admin.req(ipb::CreateScorecardRequest {
                    parent: "tenants/acme".into(),
                    scorecard_id: "readiness".into(),
                    scorecard: Some(definition()),
                    request_id: request_id.clone(),
                    ..Default::default()
                }))
                .await
                .expect("create")
                .into_inner();
            uids.push(sc.uid);
        }
        assert_eq!(uids[0], uids[1], "a retry returns the first scorecard");
        assert_eq!(
            create(&admin, "readiness", definition())
                .await
                .expect_err("twice")
                .code(),
            Code::AlreadyExists
        );
        let mut other = definition();
        other.labels = [("team".to_owned(), "sre".to_owned())].into();
        other.display_name = String::new();
        let basics = create(&admin, "basics", other).await.expect("basics");
        assert_eq!(basics.display_name, "basics", "defaults to the id");
        let stored = get("tenants/acme/scorecards/readiness")
            .await
            .expect("get")
            .into_inner();
        assert_eq!(stored.rules, definition().rules);

        // Lists: filters on labels, names and display names; sort; total.
        let list = |filter: &str, order_by: &str| {
            let client = admin.clone();
            let (filter, order_by) = (filter.to_owned(), order_by.to_owned());
            async move {
                insights(&client)
                    .list_scorecards(client.req(ipb::ListScorecardsRequest {
                        parent: "tenants/acme".into(),
                        filter,
                        order_by,
                        ..Default::default()
                    }))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let names = |r: &ipb::ListScorecardsResponse| -> Vec<String> {
            r.scorecards
                .iter()
                .map(|s| s.name.rsplit('/').next().unwrap_or_default().to_owned())
                .collect()
        };
        let all = list("", "").await.expect("list");
        assert_eq!(names(&all), ["basics", "readiness"]);
        assert_eq!(all.total_size, 2);
        for (filter, expected) in [
            ("labels.team = \"sre\"", vec!["basics"]),
            ("labels.team:*", vec!["basics", "readiness"]),
            ("labels.team != \"sre\"", vec!["readiness"]),
            (
                "name = \"tenants/acme/scorecards/read*\"",
                vec!["readiness"],
            ),
            ("display_name = \"Production readiness\"", vec!["readiness"]),
            ("name = \"tenants/other/scorecards/readiness\"", vec![]),
        ] {
            assert_eq!(
                names(&list(filter, "").await.expect(filter)),
                expected,
                "{filter}"
            );
        }
        assert_eq!(
            names(&list("", "create_time desc").await.expect("sorted")),
            ["basics", "readiness"]
        );
        assert_eq!(
            list("creator = \"x\"", "")
                .await
                .expect_err("bad filter")
                .code(),
            Code::InvalidArgument
        );

        // Who may do what: a viewer reads and evaluates but does not define.
        admin
            .iam()
            .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
                parent: "tenants/acme".into(),
                role_binding_id: "vic".into(),
                role_binding: Some(iam::RoleBinding {
                    principal: "user:vic".into(),
                    role: "tenants/acme/roles/viewer".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("bind");
        let vic = server.user("vic").await;
        insights(&vic)
            .get_scorecard(vic.req(ipb::GetScorecardRequest {
                name: "tenants/acme/scorecards/readiness".into(),
            }))
            .await
            .expect("viewers read");
        evaluations(&vic, "", "", 0, "")
            .await
            .expect("viewers evaluate");
        assert_eq!(
            create(&vic, "mine", definition())
                .await
                .expect_err("viewer")
                .code(),
            Code::PermissionDenied
        );
        let eve = server.user("eve").await;
        assert_eq!(
            evaluations(&eve, "", "", 0, "")
                .await
                .expect_err("outsider")
                .code(),
            Code::PermissionDenied
        );

        // Delete: a stale etag is refused; then it is gone; allow_missing tolerates that.
        let delete = |etag: &str, allow_missing: bool| {
            let client = admin.clone();
            let etag = etag.to_owned();
            async move {
                insights(&client)
                    .delete_scorecard(client.req(ipb::DeleteScorecardRequest {
                        name: "tenants/acme/scorecards/readiness".into(),
                        etag,
                        allow_missing,
                        ..Default::default()
                    }))
                    .await
            }
        };
        assert_eq!(
            delete("stale", false).await.expect_err("stale").code(),
            Code::Aborted
        );
        delete(&stored.etag, false).await.expect("delete");
        assert_eq!(
            get("tenants/acme/scorecards/readiness")
                .await
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
        assert_eq!(
            delete("", false).await.expect_err("missing").code(),
            Code::NotFound
        );
        delete("", true).await.expect("allow_missing");
        assert_eq!(
            names(&list("labels.team:*", "").await.expect("list")),
            ["basics"]
        );

        // The changes are in the tenant's audit trail.
        let events = admin
            .audit()
            .list_audit_events(admin.req(
                platform_api::platform::audit::v1::ListAuditEventsRequest {
                    parent: "tenants/acme".into(),
                    filter:
                        "method = \"/platform.insights.v1.InsightsService/DeleteScorecard\"".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("audit")
            .into_inner();
        assert!(!events.audit_events.is_empty());
        server.stop().await;
    }
);
