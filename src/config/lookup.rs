//! How [`super::Config::from_lookup`] reads one setting: a blank value counts as unset, a
//! number is checked against its range, and defaults and ranges come from the table
//! ([`super::settings`]) and from nowhere else. Each error names its variable, so a bad value
//! stops startup with one line the operator can act on.

use std::net::IpAddr;
use std::time::Duration;

use super::ConfigError;
use super::parse_bool;
use super::settings::{DefaultValue, setting};

/// The settings behind the lookup `from_lookup` was given.
pub(super) struct Lookup<F> {
    pub(super) get: F,
}

impl<F: Fn(&str) -> Option<String>> Lookup<F> {
    pub(super) fn var(&self, name: &'static str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// A text setting, or its default from the table.
    pub(super) fn text(&self, name: &'static str) -> String {
        self.var(name)
            .unwrap_or_else(|| match setting(name).map(|s| s.default) {
                Some(DefaultValue::Text(d)) => d.to_string(),
                _ => String::new(),
            })
    }

    pub(super) fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let v = self.text(name);
        parse_bool(&v).ok_or_else(|| err(name, &v, "expected 1/0, true/false, on/off".into()))
    }

    pub(super) fn num(&self, name: &'static str) -> Result<u64, ConfigError> {
        let Some(DefaultValue::Number { default, min, max }) = setting(name).map(|s| s.default)
        else {
            return Err(err(
                name,
                "",
                "not a number setting of SETTINGS (a bug)".into(),
            ));
        };
        match self.var(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(err(
                    name,
                    &v,
                    format!("expected a whole number from {min} to {max}"),
                )),
            },
        }
    }

    pub(super) fn millis(&self, name: &'static str) -> Result<Duration, ConfigError> {
        self.num(name).map(Duration::from_millis)
    }

    pub(super) fn ip(&self, name: &'static str) -> Result<Option<IpAddr>, ConfigError> {
        match self.var(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| err(name, &v, format!("not an IP address ({e})"))),
        }
    }

    /// A NATS subject to publish on: tokens without wildcards or blanks.
    pub(super) fn subject(&self, name: &'static str) -> Result<String, ConfigError> {
        let v = self.text(name);
        let valid = !v.is_empty()
            && v.split('.')
                .all(|t| !t.is_empty() && t.bytes().all(|b| b > b' ' && b != b'*' && b != b'>'));
        if valid {
            Ok(v)
        } else {
            Err(err(
                name,
                &v,
                "expected a NATS subject without wildcards".into(),
            ))
        }
    }
}

pub(super) fn err(var: &'static str, value: &str, reason: String) -> ConfigError {
    ConfigError {
        var,
        value: value.to_string(),
        reason,
    }
}
