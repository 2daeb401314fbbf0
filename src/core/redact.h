// Masks secrets (passwords in connection strings, registered API keys) in text meant for humans.
#pragma once

#include <string>
#include <string_view>

namespace ka {

inline constexpr std::string_view kRedacted = "***";

// Masks the password of every URI userinfo (scheme://user:secret@host) and the value of
// every password=... pair (keyword/value conninfo or URI query) in free text.
std::string redact(std::string_view text);

// Registers a secret (e.g. an API key) so redact() masks it wherever it appears.
// Secrets shorter than kMinSecretLength are ignored: masking short common words would
// mangle output, and those are caught by the pattern rules above.
inline constexpr std::size_t kMinSecretLength = 8;
void register_secret(std::string secret);

}  // namespace ka
