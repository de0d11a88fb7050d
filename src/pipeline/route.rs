//! Route: the score band picks a track, and the track picks its channels (both from config).

use serde::Serialize;

use crate::config::RouteSettings;
use crate::lead::Score;

/// A nurturing track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Long-term educational drip.
    Drip,
    /// Active nurturing with a case study for the lead's sector.
    Active,
    /// Hot lead: demo invitation, SMS, and sales alerted on Slack.
    Hot,
}

impl Track {
    /// The lowercase name used in config, storage and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Drip => "drip",
            Track::Active => "active",
            Track::Hot => "hot",
        }
    }
}

/// A way to reach someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Marketing email to the lead.
    Email,
    /// Marketing SMS to the lead.
    Sms,
    /// Alert to the sales team's Slack channel (internal, not marketing).
    Slack,
}

impl Channel {
    /// The lowercase name used in config, storage and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Slack => "slack",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            "slack" => Some(Channel::Slack),
            _ => None,
        }
    }
}

/// The routing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Chosen track.
    pub track: Track,
    /// Channels of that track, before consent and reachability are applied.
    pub channels: Vec<Channel>,
}

/// Picks the track for a score: below `active_from` drip, above `hot_above` hot.
pub fn route(score: Score, settings: &RouteSettings) -> Route {
    let value = score.value();
    let track = if value > settings.hot_above {
        Track::Hot
    } else if value >= settings.active_from {
        Track::Active
    } else {
        Track::Drip
    };
    let channels = settings
        .channels
        .get(track.as_str())
        .map(|names| names.iter().filter_map(|n| Channel::parse(n)).collect())
        .unwrap_or_default();
    Route { track, channels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_edges_follow_the_defaults() {
        let settings = RouteSettings::default();
        let track = |v| route(Score::new(v).unwrap(), &settings).track;

        assert_eq!(track(29), Track::Drip);
        assert_eq!(track(30), Track::Active);
        assert_eq!(track(70), Track::Active);
        assert_eq!(track(71), Track::Hot);
        assert_eq!(
            route(Score::new(90).unwrap(), &settings).channels,
            vec![Channel::Email, Channel::Sms, Channel::Slack]
        );
    }
}
