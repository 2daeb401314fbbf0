// The one registry of settings: key, type, default, range, environment variable, documentation.
// Parsing, validation, config-example.yaml and docs/configuration.md all derive from it.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "config/config.h"

namespace ka::config {

enum class Type { boolean, integer, string, choice, key_list };

using FieldRef = std::variant<bool*, int*, std::string*, std::vector<ApiKey>*>;

struct Setting {
    std::string_view key;  // dotted path, e.g. "postgres.pool_size"
    Type type;
    std::string_view default_value;
    long long min = 0;  // integers only
    long long max = 0;
    std::span<const std::string_view> choices;  // choice only
    std::string_view doc;
    std::string_view alias_env;  // an extra environment variable, e.g. POSTGRES_URL
    bool secret = false;         // redacted when shown
    FieldRef (*field)(Config&);
};

std::span<const Setting> settings();
const Setting* find_setting(std::string_view key);

// KNOWLEDGE_AGENT_ + the key upper-cased with dots as underscores.
std::string env_name(std::string_view key);

// "an integer from 1 to 1000", "one of: console, json", ...
std::string allowed_values(const Setting& setting);

}  // namespace ka::config
