//! Envoy's response flags: why a request ended the way it did, in the short
//! codes that access logs and the `response_flags` metric label carry.

/// Flags in Envoy's bit order, which is also the order they print in.
const CODES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    FailedLocalHealthCheck = 0,
    NoHealthyUpstream,
    UpstreamRequestTimeout,
    LocalReset,
    UpstreamRemoteReset,
    UpstreamConnectionFailure,
    UpstreamConnectionTermination,
    UpstreamOverflow,
    NoRouteFound,
    DelayInjected,
    FaultInjected,
    RateLimited,
    UnauthorizedExternalService,
    RateLimitServiceError,
    DownstreamConnectionTermination,
    UpstreamRetryLimitExceeded,
    StreamIdleTimeout,
    InvalidEnvoyRequestHeaders,
    DownstreamProtocolError,
    UpstreamMaxStreamDurationReached,
    ResponseFromCacheFilter,
    NoFilterConfigFound,
    DurationTimeout,
    UpstreamProtocolError,
    NoClusterFound,
    OverloadManager,
    DnsResolutionFailed,
    DropOverload,
    DownstreamRemoteReset,
    UnconditionalDropOverload,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    pub fn set(&mut self, flag: Flag) {
        self.0 |= 1 << flag as u8;
    }

    pub fn has(&self, flag: Flag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for ResponseFlags {
    /// `-` when no flag is set, as in Envoy's access logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (i, code) in CODES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_codes_in_envoy_order() {
        let mut flags = ResponseFlags::default();
        assert_eq!(flags.to_string(), "-");
        flags.set(Flag::UpstreamRetryLimitExceeded);
        flags.set(Flag::UpstreamConnectionFailure);
        assert_eq!(flags.to_string(), "UF,URX");
        flags.set(Flag::NoClusterFound);
        assert!(flags.has(Flag::NoClusterFound));
        assert_eq!(flags.to_string(), "UF,URX,NC");
    }
}
