//! Strict, forgiving parsing of a model's scoring answer. Forgiving about the wrapping: a
//! JSON object inside a code fence or surrounded by prose is found. Strict about the values: the score is an integer 1..=100
//! (a JSON integer or a string of digits), never a fraction, an exponent, a negative or a
//! null, so a made-up 0 is never stored. The error says what to fix, for the one re-ask.

use serde_json::{Map, Value};

use crate::ai::ScoreCard;
use crate::lead::Score;

/// A scoring answer that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreAnswer {
    /// 1 to 100.
    pub score: Score,
    /// The model's reasons, one per entry.
    pub reasoning: Vec<String>,
    /// How the message should sound.
    pub suggested_tone: String,
    /// 0 to 1.
    pub confidence: f64,
    /// Short signal names the model noticed.
    pub signals: Vec<String>,
}

impl ScoreAnswer {
    /// The card the pipeline stores, naming the model that answered.
    pub fn into_card(self, model: &str) -> ScoreCard {
        ScoreCard::plain(
            self.score,
            self.reasoning,
            self.suggested_tone,
            self.confidence,
            model.to_owned(),
        )
    }
}

/// Why an answer was refused; the text is sent back to the model when it is asked again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnswerError(pub String);

fn refuse(message: impl Into<String>) -> AnswerError {
    AnswerError(message.into())
}

/// Parses the text of a scoring answer.
pub fn parse_score_answer(text: &str) -> Result<ScoreAnswer, AnswerError> {
    let object = find_object(text).ok_or_else(|| refuse("no JSON object found in the answer"))?;
    Ok(ScoreAnswer {
        score: score_field(&object)?,
        reasoning: reasoning_field(&object)?,
        suggested_tone: text_field(&object, "suggested_tone")?,
        confidence: confidence_field(&object)?,
        signals: signals_field(&object)?,
    })
}

/// The first JSON object in the text: inside a code fence, on its own, or after prose.
pub(crate) fn find_object(text: &str) -> Option<Map<String, Value>> {
    text.char_indices()
        .filter(|(_, c)| *c == '{')
        .find_map(|(start, _)| {
            let mut values =
                serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            match values.next() {
                Some(Ok(Value::Object(map))) => Some(map),
                _ => None,
            }
        })
}

fn score_field(object: &Map<String, Value>) -> Result<Score, AnswerError> {
    let expected = "expected an integer from 1 to 100";
    let value = match object.get("score") {
        None => return Err(refuse(format!("score is missing, {expected}"))),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => v,
            None => return Err(refuse(format!("score '{n}' is not an integer, {expected}"))),
        },
        Some(Value::String(s)) => {
            let digits = s.trim();
            match digits.parse::<i64>() {
                Ok(v) if digits.chars().all(|c| c.is_ascii_digit()) => v,
                _ => return Err(refuse(format!("score '{s}' is not an integer, {expected}"))),
            }
        }
        Some(other) => return Err(refuse(format!("score is {other}, {expected}"))),
    };
    Score::new(value).map_err(|_| refuse(format!("score '{value}' is out of range, {expected}")))
}

fn reasoning_field(object: &Map<String, Value>) -> Result<Vec<String>, AnswerError> {
    let reasons: Vec<String> = match object.get("reasoning") {
        Some(Value::String(s)) => vec![s.trim().to_owned()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(|s| s.trim().to_owned()))
            .collect::<Option<_>>()
            .ok_or_else(|| refuse("reasoning must be a string or a list of strings"))?,
        None => return Err(refuse("reasoning is missing")),
        Some(_) => return Err(refuse("reasoning must be a string or a list of strings")),
    };
    let reasons: Vec<String> = reasons.into_iter().filter(|r| !r.is_empty()).collect();
    if reasons.is_empty() {
        return Err(refuse("reasoning is empty"));
    }
    Ok(reasons)
}

fn text_field(object: &Map<String, Value>, name: &str) -> Result<String, AnswerError> {
    match object.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(_) => Err(refuse(format!("{name} must be a non-empty string"))),
        None => Err(refuse(format!("{name} is missing"))),
    }
}

fn confidence_field(object: &Map<String, Value>) -> Result<f64, AnswerError> {
    let expected = "expected a number from 0 to 1";
    let value = match object.get("confidence") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        None => return Err(refuse(format!("confidence is missing, {expected}"))),
        Some(other) => return Err(refuse(format!("confidence is {other}, {expected}"))),
    };
    match value {
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(refuse(format!("confidence is out of range, {expected}"))),
    }
}

fn signals_field(object: &Map<String, Value>) -> Result<Vec<String>, AnswerError> {
    match object.get("signals") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| refuse("signals must be a list of strings")),
        Some(_) => Err(refuse("signals must be a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(score: &str) -> String {
        format!(
            r#"{{"score": {score}, "reasoning": "VP title, asked for a demo",
                 "suggested_tone": "direct", "confidence": 0.8, "signals": ["demo_request"]}}"#
        )
    }

    #[test]
    fn an_object_in_a_code_fence_or_in_prose_is_found() {
        let fenced = format!("```json\n{}\n```", answer("85"));
        let prose = format!(
            "Sure! Here is my assessment: {} Hope this helps.",
            answer("85")
        );

        for text in [answer("85"), fenced, prose] {
            let parsed = parse_score_answer(&text).unwrap();
            assert_eq!(parsed.score.value(), 85);
            assert_eq!(parsed.signals, vec!["demo_request"]);
        }
    }

    #[test]
    fn the_integer_and_the_numeric_string_are_accepted() {
        assert_eq!(parse_score_answer(&answer("85")).unwrap().score.value(), 85);
        assert_eq!(
            parse_score_answer(&answer("\"85\"")).unwrap().score.value(),
            85
        );
    }

    #[test]
    fn fractions_out_of_range_exponents_and_nulls_are_refused_with_the_reason() {
        let cases = [
            ("0.85", "score '0.85' is not an integer"),
            ("850", "score '850' is out of range"),
            ("-3", "score '-3' is out of range"),
            ("9.2e124", "score '9.2e+124' is not an integer"),
            ("null", "score is null"),
            ("0", "score '0' is out of range"),
            ("\"85.5\"", "score '85.5' is not an integer"),
        ];
        for (score, reason) in cases {
            let err = parse_score_answer(&answer(score)).unwrap_err();
            assert!(err.0.starts_with(reason), "{score}: {err}");
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let no_score = r#"{"reasoning": "x", "suggested_tone": "warm", "confidence": 0.5}"#;
        let no_tone = r#"{"score": 50, "reasoning": "x", "confidence": 0.5}"#;
        let bad_confidence =
            r#"{"score": 50, "reasoning": "x", "suggested_tone": "warm", "confidence": 5}"#;

        assert!(
            parse_score_answer(no_score)
                .unwrap_err()
                .0
                .starts_with("score is missing")
        );
        assert_eq!(
            parse_score_answer(no_tone).unwrap_err().0,
            "suggested_tone is missing"
        );
        assert!(
            parse_score_answer(bad_confidence)
                .unwrap_err()
                .0
                .starts_with("confidence is out of range")
        );
        assert_eq!(
            parse_score_answer("no json here").unwrap_err().0,
            "no JSON object found in the answer"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,300}") {
            let _ = parse_score_answer(&text);
        }

        #[test]
        fn any_integer_score_is_accepted_exactly_when_it_is_in_range(score in -1000i64..1000) {
            let parsed = parse_score_answer(&answer(&score.to_string()));
            proptest::prop_assert_eq!(parsed.is_ok(), (1..=100).contains(&score));
        }
    }
}
