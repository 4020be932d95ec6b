//! SearchEntities (ranked free text for a portal's search box) and GetEntityFacets (value counts
//! for its filter drop-downs).
//!
//! Search works in two steps. SQL narrows the tenant to candidates that contain every query word
//! somewhere searchable (a substring test over indexed columns and the label, annotation and tag
//! tables) and orders them so that name matches come first; then the candidates are decoded and
//! scored here with word-prefix matching, which SQL cannot express portably across SQLite and
//! PostgreSQL. Candidates are capped, so a query matching most of a huge tenant ranks the first
//! `MAX_CANDIDATES` (name matches first) rather than scanning everything.

use std::collections::BTreeSet;

use platform_api::platform::catalog::v1 as pb;
use prost::Message;
use sqlx::Row;

use crate::error::Error;
use crate::names::{self, parse_tenant_name};
use crate::pagination;

use super::{CatalogService, EntityFilter, EntityKey, bind_all, summary};

const MAX_CANDIDATES: i64 = 5000;
const DEFAULT_SEARCH_PAGE: usize = 20;
const MAX_SEARCH_PAGE: usize = 100;
const MAX_FACETS: usize = 20;
const DEFAULT_FACET_VALUES: i64 = 100;
const MAX_FACET_VALUES: i64 = 1000;

/// The words of a text, lowercased, split on whitespace and punctuation.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has_word_prefix(text: &str, word: &str) -> bool {
    words(text).iter().any(|w| w.starts_with(word))
}

/// Field weights, highest first, as documented on SearchEntities.
const W_EXACT_NAME: f64 = 100.0;
const W_NAME: f64 = 50.0;
const W_TITLE: f64 = 30.0;
const W_TAGS: f64 = 20.0;
const W_DESCRIPTION: f64 = 10.0;
const W_OTHER: f64 = 5.0;

/// Scores one entity against the query words: `None` if some word matches no field.
fn score(entity: &pb::Entity, query: &str, query_words: &[String]) -> Option<(f64, Vec<String>)> {
    let m = entity.metadata.clone().unwrap_or_default();
    let mut matched: BTreeSet<String> = BTreeSet::new();
    let mut total = 0.0;
    for word in query_words {
        let mut best: f64 = 0.0;
        if has_word_prefix(&m.name, word) {
            best = best.max(W_NAME);
            matched.insert("metadata.name".into());
        }
        if has_word_prefix(&m.title, word) {
            best = best.max(W_TITLE);
            matched.insert("metadata.title".into());
        }
        if m.tags.iter().any(|t| has_word_prefix(t, word)) {
            best = best.max(W_TAGS);
            matched.insert("metadata.tags".into());
        }
        if has_word_prefix(&m.description, word) {
            best = best.max(W_DESCRIPTION);
            matched.insert("metadata.description".into());
        }
        for (k, v) in &m.labels {
            if has_word_prefix(v, word) {
                best = best.max(W_OTHER);
                matched.insert(format!("metadata.labels.{k}"));
            }
        }
        for (k, v) in &m.annotations {
            if has_word_prefix(v, word) {
                best = best.max(W_OTHER);
                matched.insert(format!("metadata.annotations.{k}"));
            }
        }
        if best == 0.0 {
            return None;
        }
        total += best;
    }
    if m.name.eq_ignore_ascii_case(query.trim()) {
        total += W_EXACT_NAME;
    } else if m
        .name
        .to_lowercase()
        .starts_with(&query.trim().to_lowercase())
    {
        total += W_NAME / 2.0;
    }
    Some((total, matched.into_iter().collect()))
}

/// A facet field as SQL: the value expression and the joins it needs.
struct FacetSql {
    value: String,
    from: String,
    params: Vec<String>,
}

fn facet_sql(facet: &str) -> Result<FacetSql, Error> {
    let column = |c: &str| FacetSql {
        value: format!("e.{c}"),
        from: String::new(),
        params: Vec::new(),
    };
    Ok(match facet {
        "kind" => column("kind"),
        "namespace" => column("namespace"),
        "spec.type" | "type" => column("spec_type"),
        "spec.lifecycle" | "lifecycle" => column("lifecycle"),
        "owner" => column("owner_ref"),
        "system" => column("system_ref"),
        "domain" => FacetSql {
            value: "x.target_ref".into(),
            from: format!(
                " JOIN catalog_relations x ON x.tenant = e.tenant AND x.source_ref = e.ref AND x.type = {} AND x.target_ref LIKE 'domain:%'",
                pb::RelationType::PartOf as i32
            ),
            params: Vec::new(),
        },
        "tags" => FacetSql {
            value: "x.tag".into(),
            from: " JOIN catalog_tags x ON x.tenant = e.tenant AND x.ref = e.ref".into(),
            params: Vec::new(),
        },
        _ if facet.starts_with("labels.") || facet.starts_with("annotations.") => {
            let (table, key) = match facet.split_once('.') {
                Some(("labels", key)) => ("catalog_labels", key),
                Some((_, key)) => ("catalog_annotations", key),
                None => ("catalog_labels", ""),
            };
            if key.is_empty() {
                return Err(Error::invalid_argument(
                    "facets",
                    "a key is required after `labels.` or `annotations.`",
                ));
            }
            FacetSql {
                value: "x.value".into(),
                // The key's placeholder is numbered by the caller (`{key}`).
                from: format!(
                    " JOIN {table} x ON x.tenant = e.tenant AND x.ref = e.ref AND x.key = {{key}}"
                ),
                params: vec![key.to_owned()],
            }
        }
        other => {
            return Err(Error::invalid_argument(
                "facets",
                format!(
                    "`{}` is not a facet (kind, namespace, spec.type, spec.lifecycle, owner, system, domain, tags, labels.<key>, annotations.<key>)",
                    names::printable(other)
                ),
            ));
        }
    })
}

impl CatalogService {
    pub(super) async fn entities_search(
        &self,
        req: &pb::SearchEntitiesRequest,
    ) -> Result<pb::SearchEntitiesResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        crate::filter::check_characters("query", &req.query)?;
        let query = req.query.trim();
        if query.is_empty() || req.query.chars().count() > 256 {
            return Err(Error::invalid_argument("query", "1-256 characters"));
        }
        let query_words = words(query);
        if query_words.is_empty() {
            return Err(Error::invalid_argument(
                "query",
                "must contain at least one letter or digit",
            ));
        }
        let page_size = match req.page_size {
            n if n < 0 => {
                return Err(Error::invalid_argument("page_size", "must not be negative"));
            }
            0 => DEFAULT_SEARCH_PAGE,
            n => (n as usize).min(MAX_SEARCH_PAGE),
        };
        let mut filter = EntityFilter::parse(&req.filter, "")?;
        let fingerprint = pagination::query_fingerprint(&[&tenant, &req.query, &req.filter]);
        let offset: usize = match pagination::decode_token(fingerprint, &req.page_token)? {
            None => 0,
            Some(text) => text.parse().map_err(|_| {
                Error::invalid_argument("page_token", "not a page token of this query")
            })?,
        };
        // Every word must occur somewhere searchable (a superset of the word-prefix rule).
        let contains = |column: &str, p: &str| {
            format!("length({column}) <> length(replace({column}, {p}, ''))")
        };
        let mut name_first = Vec::new();
        for word in &query_words {
            let p = filter.param(word.clone());
            filter.clauses.push(format!(
                "({} OR EXISTS (SELECT 1 FROM catalog_tags t WHERE t.tenant = e.tenant AND t.ref = e.ref AND {}) \
                 OR EXISTS (SELECT 1 FROM catalog_labels l WHERE l.tenant = e.tenant AND l.ref = e.ref AND {}) \
                 OR EXISTS (SELECT 1 FROM catalog_annotations a WHERE a.tenant = e.tenant AND a.ref = e.ref AND {}))",
                contains("e.search_text", &p),
                contains("lower(t.tag)", &p),
                contains("lower(l.value)", &p),
                contains("lower(a.value)", &p),
            ));
            name_first.push(format!(
                "CASE WHEN {} THEN 0 ELSE 1 END",
                contains("e.name_key", &p)
            ));
        }
        let sql = format!(
            "SELECT e.body FROM catalog_entities e{} ORDER BY {}, e.ref LIMIT {MAX_CANDIDATES}",
            filter.where_sql(),
            name_first.join(" + ")
        );
        let rows = bind_all(sqlx::query(&sql).bind(&tenant), &filter.params)
            .fetch_all(self.pool())
            .await?;
        let mut hits: Vec<(f64, String, pb::Entity, Vec<String>)> = Vec::new();
        for row in &rows {
            let body: Vec<u8> = row.try_get("body")?;
            let entity = pb::Entity::decode(body.as_slice())
                .map_err(|e| Error::internal(format!("stored entity: {e}")))?;
            if let Some((s, fields)) = score(&entity, query, &query_words) {
                hits.push((s, EntityKey::of(&entity).ref_key(), entity, fields));
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let total = hits.len();
        let next_page_token = if offset + page_size < total {
            pagination::encode_token(fingerprint, &(offset + page_size).to_string())
        } else {
            String::new()
        };
        let results = hits
            .into_iter()
            .skip(offset)
            .take(page_size)
            .map(|(score, _, entity, matched_fields)| pb::SearchResult {
                entity: Some(summary(&tenant, &entity)),
                score,
                matched_fields,
            })
            .collect();
        Ok(pb::SearchEntitiesResponse {
            results,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    pub(super) async fn entity_facets_get(
        &self,
        req: &pb::GetEntityFacetsRequest,
    ) -> Result<pb::GetEntityFacetsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        if req.facets.is_empty() || req.facets.len() > MAX_FACETS {
            return Err(Error::invalid_argument(
                "facets",
                format!("between 1 and {MAX_FACETS} facets"),
            ));
        }
        let max_values = match req.max_values {
            n if n < 0 => {
                return Err(Error::invalid_argument(
                    "max_values",
                    "must not be negative",
                ));
            }
            0 => DEFAULT_FACET_VALUES,
            n => i64::from(n).min(MAX_FACET_VALUES),
        };
        let facets: Vec<FacetSql> = req
            .facets
            .iter()
            .map(|f| facet_sql(f))
            .collect::<Result<_, _>>()?;
        let filter = EntityFilter::parse(&req.filter, "")?;
        let mut out = Vec::with_capacity(facets.len());
        for (name, facet) in req.facets.iter().zip(facets) {
            let mut params = filter.params.clone();
            let mut from = facet.from.clone();
            for p in &facet.params {
                params.push(p.clone());
                from = from.replace("{key}", &format!("${}", params.len() + 1));
            }
            let sql = format!(
                "SELECT {v} AS v, COUNT(DISTINCT e.ref) AS n FROM catalog_entities e{from}{w} AND {v} <> '' \
                 GROUP BY {v} ORDER BY n DESC, v LIMIT {}",
                max_values + 1,
                v = facet.value,
                w = filter.where_sql(),
            );
            let rows = bind_all(sqlx::query(&sql).bind(&tenant), &params)
                .fetch_all(self.pool())
                .await?;
            let truncated = rows.len() as i64 > max_values;
            let values = rows
                .iter()
                .take(max_values as usize)
                .map(|row| {
                    Ok(pb::EntityFacetValue {
                        value: row.try_get("v")?,
                        count: i32::try_from(row.try_get::<i64, _>("n")?).unwrap_or(i32::MAX),
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            out.push(pb::EntityFacet {
                facet: name.clone(),
                values,
                truncated,
            });
        }
        Ok(pb::GetEntityFacetsResponse { facets: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(name: &str, title: &str, description: &str, tags: &[&str]) -> pb::Entity {
        pb::Entity {
            kind: "Component".into(),
            metadata: Some(pb::EntityMetadata {
                name: name.into(),
                title: title.into(),
                description: description.into(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ranking_follows_the_documented_field_order() {
        let q = "payments";
        let w = words(q);
        let exact = score(&entity("payments", "", "", &[]), q, &w)
            .expect("hit")
            .0;
        let prefix = score(&entity("payments-api", "", "", &[]), q, &w)
            .expect("hit")
            .0;
        let title = score(&entity("ledger", "Payments ledger", "", &[]), q, &w)
            .expect("hit")
            .0;
        let tag = score(&entity("ledger", "", "", &["payments"]), q, &w)
            .expect("hit")
            .0;
        let description = score(&entity("ledger", "", "Moves payments around", &[]), q, &w)
            .expect("hit")
            .0;
        assert!(exact > prefix, "{exact} > {prefix}");
        assert!(prefix > title, "{prefix} > {title}");
        assert!(title > tag, "{title} > {tag}");
        assert!(tag > description, "{tag} > {description}");
    }

    #[test]
    fn every_word_must_match_a_word_prefix() {
        let e = entity("ledger", "Payments ledger", "", &[]);
        assert!(score(&e, "pay led", &words("pay led")).is_some());
        // `ments` is inside a word, not at its start.
        assert!(score(&e, "ments", &words("ments")).is_none());
        assert!(score(&e, "pay nothing", &words("pay nothing")).is_none());
        let (_, fields) = score(&e, "ledger", &words("ledger")).expect("hit");
        assert_eq!(fields, vec!["metadata.name", "metadata.title"]);
    }

    #[test]
    fn unknown_facets_are_refused() {
        assert!(facet_sql("kind").is_ok());
        assert!(facet_sql("labels.tier").is_ok());
        assert!(facet_sql("labels.").is_err());
        assert!(facet_sql("spec.definition").is_err());
    }
}
