//! The built-in scorer: a transparent points model whose rules live in configuration.
//! Every point of a score can be traced to a named rule, so a marketer can argue with it.

use crate::ai::ScoreCard;
use crate::config::{RouteSettings, ScoreRule, ScoreSettings};
use crate::lead::{Lead, Score};

/// Scores a lead by adding the points of every matching rule to a base.
#[derive(Debug, Clone)]
pub struct PointsScorer {
    settings: ScoreSettings,
    bands: RouteSettings,
}

impl PointsScorer {
    /// Builds the scorer; rules were checked when the settings loaded. The route bands pick
    /// the suggested tone, so tone and track always agree.
    pub fn new(settings: ScoreSettings, bands: RouteSettings) -> Self {
        Self { settings, bands }
    }

    /// Scores without I/O.
    pub fn score_now(&self, lead: &Lead) -> ScoreCard {
        let mut matched: Vec<(&ScoreRule, String)> = Vec::new();
        let mut present_fields: Vec<&str> = Vec::new();
        for rule in &self.settings.rules {
            let Some(value) = field_value(lead, &rule.field) else {
                continue;
            };
            if !present_fields.contains(&rule.field.as_str()) {
                present_fields.push(&rule.field);
            }
            if rule_holds(rule, &value) {
                matched.push((rule, value));
            }
        }

        let total = self.settings.base + matched.iter().map(|(r, _)| r.points).sum::<i64>();
        let score = Score::clamped(total);
        matched.sort_by_key(|(r, _)| std::cmp::Reverse(r.points.abs()));
        let reasoning = matched
            .iter()
            .take(3)
            .map(|(r, v)| format!("{:+} {} ({}: {})", r.points, r.label, r.field, clip(v)))
            .collect();
        let full = self.settings.fields_for_full_confidence.max(1) as f64;
        let confidence = (0.2 + 0.8 * (present_fields.len() as f64 / full)).min(1.0);
        ScoreCard::plain(
            score,
            reasoning,
            suggest_tone(lead, score, &self.bands).into(),
            (confidence * 100.0).round() / 100.0,
            "builtin-points".into(),
        )
    }
}

/// The value a rule field names on this lead, as text; `None` when absent or blank.
fn field_value(lead: &Lead, field: &str) -> Option<String> {
    let value = match field.split_once('.') {
        Some(("answers", key)) => lead.answer_text(key),
        Some(("behaviour", key)) => match lead.behaviour.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
        Some(("utm", key)) => lead.utm.get(key).cloned(),
        _ => match field {
            "job_title" => lead.job_title.clone(),
            "company" => lead.company.clone(),
            "source" => Some(lead.source.clone()),
            "country" => lead.country.clone(),
            "sector" => lead.answer_text("sector"),
            "company_size" => lead.answer_text("company_size"),
            _ => None,
        },
    };
    value.filter(|v| !v.trim().is_empty())
}

fn rule_holds(rule: &ScoreRule, value: &str) -> bool {
    let lower = value.trim().to_lowercase();
    if let Some(options) = &rule.equals {
        return options.iter().any(|o| o.to_lowercase() == lower);
    }
    if let Some(words) = &rule.contains_any {
        let tokens: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        return words.iter().any(|w| {
            let w = w.to_lowercase();
            let parts: Vec<&str> = w.split_whitespace().collect();
            tokens
                .windows(parts.len().max(1))
                .any(|win| win == parts.as_slice())
        });
    }
    let Some(number) = lower.parse::<f64>().ok().filter(|n| n.is_finite()) else {
        return false;
    };
    match (rule.at_least, rule.below) {
        (Some(min), _) => number >= min,
        (_, Some(max)) => number < max,
        _ => false,
    }
}

fn suggest_tone(lead: &Lead, score: Score, bands: &RouteSettings) -> &'static str {
    let senior = lead.job_title.as_deref().is_some_and(|t| {
        let t = t.to_lowercase();
        ["ceo", "founder", "owner", "chief", "vp", "director", "head"]
            .iter()
            .any(|w| t.split(|c: char| !c.is_alphanumeric()).any(|tok| tok == *w))
    });
    let value = score.value();
    if senior {
        "concise and direct"
    } else if value > bands.hot_above {
        "warm and direct"
    } else if value >= bands.active_from {
        "consultative"
    } else {
        "friendly and educational"
    }
}

fn clip(value: &str) -> String {
    value.chars().take(40).collect()
}

/// Checks that each rule has exactly one condition and a known field; the error names the rule.
pub fn check_rules(rules: &[ScoreRule]) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        let conditions = [
            rule.equals.is_some(),
            rule.contains_any.is_some(),
            rule.at_least.is_some(),
            rule.below.is_some(),
        ];
        if conditions.iter().filter(|c| **c).count() != 1 {
            return Err(format!(
                "score.rules[{i}] ('{}') needs exactly one of equals, contains_any, at_least, below",
                rule.label
            ));
        }
        let known_prefix = ["answers.", "behaviour.", "utm."]
            .iter()
            .any(|p| rule.field.starts_with(p) && rule.field.len() > p.len());
        let known_field = [
            "job_title",
            "company",
            "source",
            "country",
            "sector",
            "company_size",
        ]
        .contains(&rule.field.as_str());
        if !known_prefix && !known_field {
            return Err(format!("score.rules[{i}]: unknown field '{}'", rule.field));
        }
    }
    Ok(())
}

fn rule(label: &str, field: &str, points: i64) -> ScoreRule {
    ScoreRule {
        label: label.into(),
        field: field.into(),
        points,
        equals: None,
        contains_any: None,
        at_least: None,
        below: None,
    }
}

fn words(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| s.to_string()).collect())
}

/// The rules shipped as defaults. They cover landing-page leads (title, company size,
/// budget, engagement) and the CRM fields of the two shipped data sets (prior campaign
/// outcome, occupation). `nurture config show` prints them for editing.
pub fn default_rules() -> Vec<ScoreRule> {
    let with = |mut r: ScoreRule, f: fn(&mut ScoreRule)| {
        f(&mut r);
        r
    };
    vec![
        with(rule("senior decision maker", "job_title", 30), |r| {
            r.contains_any = words(&[
                "ceo",
                "cfo",
                "cto",
                "coo",
                "founder",
                "owner",
                "chief",
                "vp",
                "vice president",
                "director",
                "head",
                "partner",
                "president",
                "businessman",
                "entrepreneur",
            ])
        }),
        with(rule("manager", "job_title", 15), |r| {
            r.contains_any = words(&["manager", "management", "lead", "working professional"])
        }),
        with(rule("student or unemployed", "job_title", -10), |r| {
            r.contains_any = words(&["student", "unemployed"])
        }),
        with(rule("high-intent source", "source", 15), |r| {
            r.equals = words(&["referral", "reference", "welingak website", "partner"])
        }),
        with(rule("paid or organic search", "source", 5), |r| {
            r.equals = words(&["google", "organic search", "bing", "landing_page"])
        }),
        with(
            rule("landing page submission", "behaviour.lead_origin", 10),
            |r| r.equals = words(&["landing page submission", "lead add form"]),
        ),
        with(rule("repeat visitor", "behaviour.total_visits", 10), |r| {
            r.at_least = Some(3.0)
        }),
        with(
            rule("long time on site", "behaviour.total_time_on_site_s", 15),
            |r| r.at_least = Some(600.0),
        ),
        with(
            rule("some time on site", "behaviour.total_time_on_site_s", 5),
            |r| r.at_least = Some(120.0),
        ),
        with(
            rule("deep page views", "behaviour.page_views_per_visit", 5),
            |r| r.at_least = Some(3.0),
        ),
        with(rule("mid-size company", "company_size", 10), |r| {
            r.equals = words(&["51-200", "201-500", "201-1000"])
        }),
        with(rule("large company", "company_size", 20), |r| {
            r.equals = words(&["501-1000", "1001-5000", "1000+", "5000+"])
        }),
        with(
            rule("budget stated", "answers.monthly_budget_usd", 15),
            |r| r.at_least = Some(1000.0),
        ),
        with(rule("asks for a demo", "answers.message", 10), |r| {
            r.contains_any = words(&["demo", "pricing", "price", "quote", "trial"])
        }),
        with(
            rule(
                "converted in a previous campaign",
                "answers.previous_outcome",
                45,
            ),
            |r| r.equals = words(&["success"]),
        ),
        with(
            rule(
                "contacted in a previous campaign",
                "answers.previous_contacts",
                10,
            ),
            |r| r.at_least = Some(1.0),
        ),
        with(
            rule("reachable on mobile", "answers.contact_channel", 5),
            |r| r.equals = words(&["cellular", "mobile"]),
        ),
        with(
            rule("retired or student client", "answers.occupation", 15),
            |r| r.equals = words(&["retired", "student"]),
        ),
        with(
            rule(
                "called many times already",
                "answers.campaign_contacts",
                -10,
            ),
            |r| r.at_least = Some(4.0),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lead::{Consent, Email};

    fn lead(job_title: Option<&str>, source: &str) -> Lead {
        Lead {
            email: Email::parse("a@example.com").unwrap(),
            first_name: None,
            last_name: None,
            company: None,
            job_title: job_title.map(String::from),
            phone_raw: None,
            phone: None,
            country: None,
            source: source.into(),
            consent: Consent::default(),
            answers: BTreeMap::new(),
            behaviour: BTreeMap::new(),
            utm: BTreeMap::new(),
        }
    }

    #[test]
    fn points_add_up_from_base_and_name_their_rules() {
        let scorer = PointsScorer::new(ScoreSettings::default(), RouteSettings::default());
        let mut vp = lead(Some("VP Sales"), "google");
        vp.behaviour.insert("total_visits".into(), 5.into());

        let card = scorer.score_now(&vp);

        // base 10 + senior 30 + search 5 + repeat visitor 10
        assert_eq!(card.score.value(), 55);
        assert!(card.reasoning[0].contains("senior decision maker"));
        assert_eq!(card.suggested_tone, "concise and direct");
    }

    #[test]
    fn whole_words_only_so_vp_does_not_match_inside_other_words() {
        let scorer = PointsScorer::new(ScoreSettings::default(), RouteSettings::default());

        let card = scorer.score_now(&lead(Some("MVP developer"), "x"));

        assert_eq!(card.score.value(), 10);
    }

    #[test]
    fn infinite_numbers_in_text_do_not_earn_points() {
        let scorer = PointsScorer::new(ScoreSettings::default(), RouteSettings::default());
        let mut lead = lead(None, "x");
        lead.answers
            .insert("monthly_budget_usd".into(), "inf".into());
        lead.behaviour.insert("total_visits".into(), "1e999".into());

        assert_eq!(scorer.score_now(&lead).score.value(), 10);
    }

    #[test]
    fn a_rule_with_two_conditions_is_refused_by_name() {
        let mut bad = default_rules();
        bad[0].equals = words(&["x"]);

        let err = check_rules(&bad).unwrap_err();

        assert!(err.contains("senior decision maker"), "{err}");
    }
}
