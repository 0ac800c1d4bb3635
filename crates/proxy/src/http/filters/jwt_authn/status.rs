//! The verification outcomes of Google's jwt_verify_lib, which Envoy uses:
//! the numbers (for `failed_status_in_metadata`) and the texts (the body of
//! Envoy's 401/403 replies) are theirs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    JwtMissed = 1,
    JwtNotYetValid = 2,
    JwtExpired = 3,
    JwtBadFormat = 4,
    JwtHeaderParseErrorBadBase64 = 5,
    JwtHeaderParseErrorBadJson = 6,
    JwtHeaderBadAlg = 7,
    JwtHeaderNotImplementedAlg = 8,
    JwtHeaderBadKid = 9,
    JwtPayloadParseErrorBadBase64 = 10,
    JwtPayloadParseErrorBadJson = 11,
    JwtPayloadParseErrorIssNotString = 12,
    JwtPayloadParseErrorSubNotString = 13,
    JwtPayloadParseErrorIatNotInteger = 14,
    JwtPayloadParseErrorIatOutOfRange = 15,
    JwtPayloadParseErrorNbfNotInteger = 16,
    JwtPayloadParseErrorNbfOutOfRange = 17,
    JwtPayloadParseErrorExpNotInteger = 18,
    JwtPayloadParseErrorExpOutOfRange = 19,
    JwtPayloadParseErrorJtiNotString = 20,
    JwtPayloadParseErrorAudNotString = 21,
    JwtSignatureParseErrorBadBase64 = 22,
    JwtEd25519SignatureWrongLength = 23,
    JwtUnknownIssuer = 24,
    JwtAudienceNotAllowed = 25,
    JwtVerificationFail = 26,
    JwksParseError = 28,
    JwksNoKeys = 29,
    JwksBadKeys = 30,
    JwksNoValidKeys = 31,
    JwksKidAlgMismatch = 32,
    JwksFetchFail = 40,
}

impl Status {
    pub fn message(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::JwtMissed => "Jwt is missing",
            Self::JwtNotYetValid => "Jwt not yet valid",
            Self::JwtExpired => "Jwt is expired",
            Self::JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            Self::JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            Self::JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Self::JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Self::JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            Self::JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Self::JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            Self::JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            Self::JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            Self::JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            Self::JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Self::JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            Self::JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            Self::JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            Self::JwtSignatureParseErrorBadBase64 => {
                "Jwt signature is an invalid Base64url encoded"
            }
            Self::JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Self::JwtUnknownIssuer => "Jwt issuer is not configured",
            Self::JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::JwtVerificationFail => "Jwt verification fails",
            Self::JwksParseError => "Jwks is an invalid JSON",
            Self::JwksNoKeys => "Jwks does not have [keys] field",
            Self::JwksBadKeys => "[keys] in Jwks is not an array",
            Self::JwksNoValidKeys => "Jwks doesn't have any valid public key",
            Self::JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}
