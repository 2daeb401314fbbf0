#include "http/auth.h"

#include <algorithm>

#include <openssl/crypto.h>

#include <fmt/format.h>

#include "core/bytes.h"

namespace ka::http {
namespace {

std::string from_hex(std::string_view hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
    return out;
}

}  // namespace

std::string_view to_string(Role role) {
    switch (role) {
        case Role::read:
            return "read";
        case Role::write:
            return "write";
        case Role::admin:
            return "admin";
    }
    return "read";
}

bool Principal::may_use_scope(std::string_view scope) const {
    return scopes.empty() || std::find(scopes.begin(), scopes.end(), scope) != scopes.end();
}

Auth::Auth(const std::vector<config::ApiKey>& keys) {
    for (const auto& k : keys) {
        // The config validated role and digest already.
        Role role = k.role == "admin" ? Role::admin : k.role == "write" ? Role::write : Role::read;
        keys_.push_back({k.key.empty() ? from_hex(k.key_sha256) : sha256(k.key),
                         Principal{k.name, role, k.scopes}});
    }
}

std::optional<Principal> Auth::authenticate(std::string_view presented) const {
    // Comparing digests of equal length makes the comparison independent of the key's length.
    std::string digest = sha256(presented);
    const Key* found = nullptr;
    for (const auto& k : keys_) {
        if (CRYPTO_memcmp(k.digest.data(), digest.data(), digest.size()) == 0) found = &k;
    }
    if (!found || presented.empty()) return std::nullopt;
    return found->principal;
}

Result<std::vector<std::string>> allowed_scopes(const Principal& who,
                                                const std::vector<std::string>& requested) {
    if (requested.empty()) return who.scopes;
    for (const auto& s : requested) {
        if (!who.may_use_scope(s))
            return fail(ErrorCode::forbidden,
                        fmt::format("API key '{}' may not use scope '{}'", who.name, s),
                        fmt::format("this key is bound to: {}", fmt::join(who.scopes, ", ")));
    }
    return requested;
}

}  // namespace ka::http
