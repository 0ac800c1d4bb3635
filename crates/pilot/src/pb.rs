//! Small constructors for Envoy protobuf values.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};

pub(crate) fn any<M: prost::Message + prost::Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub(crate) fn boolv(value: bool) -> BoolValue {
    BoolValue { value }
}

/// Resources come over the same ADS stream.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(crate) fn socket(
    address: &str,
    port: u32,
) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Istio's `Percent` (0..=100, fractional) as a per-million fraction.
pub(crate) fn percent_million(value: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// An integer percentage as a per-hundred fraction.
pub(crate) fn percent_hundred(value: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: value.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

/// Istio `StringMatch` → Envoy `StringMatcher`; `None` for an empty match.
pub(crate) fn string_matcher(m: &api::networking::StringMatch) -> Option<StringMatcher> {
    use api::networking::StringMatchKind;
    let pattern = match m.kind()? {
        StringMatchKind::Exact(s) => string_matcher::MatchPattern::Exact(s.to_owned()),
        StringMatchKind::Prefix(s) => string_matcher::MatchPattern::Prefix(s.to_owned()),
        StringMatchKind::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

pub(crate) fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_owned(),
        ..Default::default()
    }
}

/// Decodes standard (or URL-safe) base64, as protobuf JSON `bytes` are written.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    // Protobuf JSON and PEM bodies: standard alphabet, padding optional,
    // line breaks allowed.
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&cleaned).ok().or_else(|| {
        base64::engine::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(&cleaned)
        .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn percentages_become_per_million() {
        assert_eq!(percent_million(12.5).numerator, 125_000);
        assert_eq!(percent_million(100.0).numerator, 1_000_000);
    }
}
