// API-key authentication and authorisation: roles (read < write < admin) and scope binding.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "core/error.h"

namespace ka::http {

enum class Role { read = 0, write = 1, admin = 2 };
std::string_view to_string(Role role);

// Who is calling. `scopes` empty: every scope.
struct Principal {
    std::string name;  // the key's name ("anonymous" without auth); never the key itself
    Role role = Role::read;
    std::vector<std::string> scopes;

    bool may(Role needed) const { return role >= needed; }
    bool may_use_scope(std::string_view scope) const;
};

class Auth {
  public:
    explicit Auth(const std::vector<config::ApiKey>& keys);

    bool enabled() const { return !keys_.empty(); }
    // The key sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Every configured
    // key is compared (in constant time) so the time taken says nothing about which matched.
    std::optional<Principal> authenticate(std::string_view presented) const;

  private:
    struct Key {
        std::string digest;  // raw SHA-256 of the key
        Principal principal;
    };
    std::vector<Key> keys_;
};

// Restricts requested scopes to those the caller may use. An empty request means "all mine";
// asking for a scope outside the caller's is forbidden.
Result<std::vector<std::string>> allowed_scopes(const Principal& who,
                                                const std::vector<std::string>& requested);

}  // namespace ka::http
