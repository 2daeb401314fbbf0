#include "config/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <libpq-fe.h>
#include <yaml-cpp/yaml.h>

#include "config/schema.h"
#include "core/redact.h"

namespace ka::config {
namespace {

Error config_error(std::string message, std::string hint = {}) {
    return Error{ErrorCode::config, std::move(message), std::move(hint), {}};
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

bool is_hex_digest(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
               return std::isdigit(c) || (c >= 'a' && c <= 'f');
           });
}

// auth.keys from YAML (a file, or the JSON text of an environment variable).
Result<std::vector<ApiKey>> parse_keys(const YAML::Node& node, const std::string& origin,
                                       const EnvLookup& env) {
    auto bad = [&](std::string what) {
        return std::unexpected(
            config_error(fmt::format("config key 'auth.keys' ({}): {}", origin, std::move(what)),
                         "each key: {name: ci, key_sha256: <64 hex digits> or "
                         "key: ${SECRET}, role: read|write|admin, scopes: [..]}"));
    };
    if (node.IsNull()) return std::vector<ApiKey>{};
    if (!node.IsSequence()) return bad("expected a list");
    std::vector<ApiKey> keys;
    std::set<std::string> names;
    for (std::size_t i = 0; i < node.size(); ++i) {
        const YAML::Node& item = node[i];
        std::string at = fmt::format("item {}", i + 1);
        if (!item.IsMap()) return bad(at + ": expected a mapping");
        ApiKey key;
        for (const auto& field : item) {
            // as<std::string>() throws on a key that is not a plain string ({[a]: 1}, `!tag:`).
            if (!field.first.IsScalar()) return bad(at + ": field names must be plain strings");
            std::string name = field.first.as<std::string>();
            const YAML::Node& value = field.second;
            if (name == "scopes") {
                if (!value.IsSequence()) return bad(at + ": scopes must be a list of strings");
                for (const auto& scope : value) {
                    if (!scope.IsScalar() || scope.Scalar().empty())
                        return bad(at + ": scopes must be a list of non-empty strings");
                    key.scopes.push_back(scope.Scalar());
                }
                continue;
            }
            std::string* target = name == "name"         ? &key.name
                                  : name == "key"        ? &key.key
                                  : name == "key_sha256" ? &key.key_sha256
                                  : name == "role"       ? &key.role
                                                         : nullptr;
            if (!target)
                return bad(
                    fmt::format("{}: unknown field '{}' (allowed: name, key, key_sha256, "
                                "role, scopes)",
                                at, name));
            if (!value.IsScalar()) return bad(fmt::format("{}: {} must be a string", at, name));
            auto expanded = expand_variables(value.Scalar(), env);
            if (!expanded) return std::unexpected(expanded.error());
            *target = *expanded;
        }
        if (!key.key.empty()) register_secret(key.key);
        if (key.name.empty() || key.name.size() > 64 ||
            !std::all_of(key.name.begin(), key.name.end(), [](unsigned char c) {
                return std::isalnum(c) || c == '-' || c == '_' || c == '.';
            }))
            return bad(at + ": name must be 1-64 letters, digits, '-', '_' or '.'");
        if (!names.insert(key.name).second)
            return bad(fmt::format("{}: name '{}' is used twice", at, key.name));
        if (key.key.empty() == key.key_sha256.empty())
            return bad(fmt::format("key '{}': give exactly one of key and key_sha256", key.name));
        if (!key.key.empty() && key.key.size() < 16)
            return bad(fmt::format("key '{}': the key must be at least 16 characters", key.name));
        if (!key.key_sha256.empty() && !is_hex_digest(key.key_sha256))
            return bad(
                fmt::format("key '{}': key_sha256 must be 64 lower-case hex digits "
                            "(sha256sum of the key)",
                            key.name));
        if (key.role != "read" && key.role != "write" && key.role != "admin")
            return bad(fmt::format("key '{}': role must be one of: read, write, admin", key.name));
        keys.push_back(std::move(key));
    }
    return keys;
}

// Converts text to the setting's type and stores it; `origin` says where the text came from.
Status assign(const Setting& setting, Config& config, const std::string& text,
              const std::string& origin, const EnvLookup& env = process_env) {
    auto wrong = [&] {
        return std::unexpected(config_error(
            fmt::format("config key '{}' ({}): expected {}, got '{}'", setting.key, origin,
                        allowed_values(setting), setting.secret ? std::string(kRedacted) : text)));
    };
    FieldRef field = setting.field(config);
    switch (setting.type) {
        case Type::boolean: {
            std::string v = lower(text);
            bool value;
            if (v == "true" || v == "yes" || v == "on" || v == "1") {
                value = true;
            } else if (v == "false" || v == "no" || v == "off" || v == "0") {
                value = false;
            } else {
                return wrong();
            }
            *std::get<bool*>(field) = value;
            return {};
        }
        case Type::integer: {
            long long value = 0;
            const char* end = text.data() + text.size();
            auto [ptr, ec] = std::from_chars(text.data(), end, value);
            if (ec != std::errc() || ptr != end || value < setting.min || value > setting.max) {
                return wrong();
            }
            *std::get<int*>(field) = static_cast<int>(value);
            return {};
        }
        case Type::string:
            *std::get<std::string*>(field) = text;
            return {};
        case Type::choice:
            if (std::find(setting.choices.begin(), setting.choices.end(), text) ==
                setting.choices.end()) {
                return wrong();
            }
            *std::get<std::string*>(field) = text;
            return {};
        case Type::key_list: {
            YAML::Node node;
            try {
                node = YAML::Load(text);
            } catch (const YAML::Exception&) {
                return std::unexpected(config_error(fmt::format(
                    "config key '{}' ({}): not valid JSON or YAML", setting.key, origin)));
            }
            auto keys = parse_keys(node, origin, env);
            if (!keys) return std::unexpected(keys.error());
            *std::get<std::vector<ApiKey>*>(field) = std::move(*keys);
            return {};
        }
    }
    return {};
}

// The keys allowed directly under a section, for "unknown key" messages.
std::string keys_under(std::string_view section) {
    std::set<std::string> names;
    for (const auto& s : settings()) {
        std::string_view key = s.key;
        if (!section.empty()) {
            if (!key.starts_with(section) || key.size() <= section.size() ||
                key[section.size()] != '.')
                continue;
            key.remove_prefix(section.size() + 1);
        }
        names.insert(std::string(key.substr(0, key.find('.'))));
    }
    return fmt::format("{}", fmt::join(names, ", "));
}

bool is_section(std::string_view path) {
    return std::any_of(settings().begin(), settings().end(), [&](const Setting& s) {
        return s.key.size() > path.size() && s.key.starts_with(path) && s.key[path.size()] == '.';
    });
}

Status apply_yaml(const YAML::Node& node, const std::string& path, Config& config,
                  const std::string& source, const EnvLookup& env) {
    auto where = [&](const YAML::Node& n) {
        return fmt::format("{} line {}", source, n.Mark().line + 1);
    };
    if (!node.IsMap()) {
        return std::unexpected(
            config_error(fmt::format("config {} ({}): expected a mapping of keys, got a {}",
                                     path.empty() ? "file" : "key '" + path + "'", where(node),
                                     node.IsSequence() ? "list" : "single value")));
    }
    for (const auto& item : node) {
        if (!item.first.IsScalar()) {
            return std::unexpected(config_error(
                fmt::format("config {} ({}): keys must be plain strings",
                            path.empty() ? "file" : "key '" + path + "'", where(item.first))));
        }
        std::string name = item.first.as<std::string>();
        std::string key = path.empty() ? name : path + "." + name;
        const YAML::Node& value = item.second;
        if (is_section(key)) {
            if (value.IsNull()) continue;
            if (auto ok = apply_yaml(value, key, config, source, env); !ok) return ok;
            continue;
        }
        const Setting* setting = find_setting(key);
        if (!setting) {
            return std::unexpected(config_error(
                fmt::format("unknown config key '{}' ({})", key, where(item.first)),
                fmt::format("allowed keys{}: {}", path.empty() ? "" : " under '" + path + "'",
                            keys_under(path))));
        }
        if (value.IsNull()) continue;  // `key:` with no value keeps the default
        if (setting->type == Type::key_list) {
            auto keys = parse_keys(value, where(value), env);
            if (!keys) return std::unexpected(keys.error());
            *std::get<std::vector<ApiKey>*>(setting->field(config)) = std::move(*keys);
            continue;
        }
        if (!value.IsScalar()) {
            return std::unexpected(config_error(
                fmt::format("config key '{}' ({}): expected {}, got a {}", key, where(value),
                            allowed_values(*setting), value.IsMap() ? "mapping" : "list")));
        }
        auto expanded = expand_variables(value.Scalar(), env);
        if (!expanded) {
            expanded.error().message = fmt::format("config key '{}' ({}): {}", key, where(value),
                                                   expanded.error().message);
            return std::unexpected(expanded.error());
        }
        if (auto ok = assign(*setting, config, *expanded, where(value)); !ok) return ok;
    }
    return {};
}

Status apply_env(Config& config, const EnvLookup& env) {
    for (const auto& setting : settings()) {
        std::string name = env_name(setting.key);
        auto value = env(name);
        if (!value && !setting.alias_env.empty()) {
            name = std::string(setting.alias_env);
            value = env(name);
        }
        if (!value) continue;
        if (auto ok = assign(setting, config, *value, "environment variable " + name, env); !ok) {
            return ok;
        }
    }
    return {};
}

Status validate(const Config& config) {
    // Secrets are masked in every log line and error from here on.
    if (!config.embedding.api_key.empty()) register_secret(config.embedding.api_key);
    if (config.index.hnsw.ef_construction < 2 * config.index.hnsw.m) {
        return std::unexpected(config_error(
            fmt::format("config key 'index.hnsw.ef_construction' ({}) must be at least 2 x "
                        "index.hnsw.m ({}), as pgvector requires",
                        config.index.hnsw.ef_construction, config.index.hnsw.m),
            fmt::format("raise index.hnsw.ef_construction to {} or more, or lower index.hnsw.m",
                        2 * config.index.hnsw.m)));
    }
    if (!config.postgres.url.empty()) {
        char* err = nullptr;
        PQconninfoOption* options = PQconninfoParse(config.postgres.url.c_str(), &err);
        if (!options) {
            std::string reason = err ? err : "out of memory";
            PQfreemem(err);
            while (!reason.empty() && std::isspace(static_cast<unsigned char>(reason.back())))
                reason.pop_back();
            return std::unexpected(config_error(
                fmt::format("config key 'postgres.url' is not a valid connection string: {}",
                            redact(reason)),
                "use postgres://user:password@host:5432/knowledge_agent?sslmode=require or "
                "'host=... dbname=... user=...'; percent-encode special characters in passwords"));
        }
        for (auto* o = options; o->keyword; ++o) {
            if (std::string_view(o->keyword) == "password" && o->val) register_secret(o->val);
        }
        PQconninfoFree(options);
    }
    return {};
}

Result<Config> defaults() {
    Config config;
    for (const auto& setting : settings()) {
        if (auto ok = assign(setting, config, std::string(setting.default_value), "default"); !ok) {
            return std::unexpected(ok.error());
        }
    }
    return config;
}

Result<Config> load_node(const std::optional<std::string>& yaml, const EnvLookup& env,
                         const std::string& source) {
    auto config = defaults();
    if (!config) return config;
    config->source = yaml ? source : "";
    if (yaml) {
        YAML::Node root;
        try {
            root = YAML::Load(*yaml);
        } catch (const YAML::Exception& e) {
            return std::unexpected(config_error(
                fmt::format("config file {} is not valid YAML: {} (line {}, column {})", source,
                            e.msg, e.mark.line + 1, e.mark.column + 1)));
        }
        if (!root.IsNull()) {
            if (auto ok = apply_yaml(root, "", *config, source, env); !ok) {
                return std::unexpected(ok.error());
            }
        }
    }
    if (auto ok = apply_env(*config, env); !ok) return std::unexpected(ok.error());
    if (auto ok = validate(*config); !ok) return std::unexpected(ok.error());
    return config;
}

std::string default_config_path(const EnvLookup& env) {
    if (auto xdg = env("XDG_CONFIG_HOME"); xdg && !xdg->empty()) {
        return *xdg + "/knowledge-agent/config.yaml";
    }
    if (auto home = env("HOME"); home && !home->empty()) {
        return *home + "/.config/knowledge-agent/config.yaml";
    }
    return {};
}

// Writes settings as nested YAML; `value` gives each setting's text, `commented` adds docs.
std::string render_yaml(const std::function<std::string(const Setting&)>& value, bool commented) {
    std::ostringstream out;
    std::vector<std::string> open;  // currently open sections
    for (const auto& setting : settings()) {
        std::vector<std::string> parts;
        std::string_view rest = setting.key;
        for (std::size_t dot; (dot = rest.find('.')) != std::string_view::npos;) {
            parts.emplace_back(rest.substr(0, dot));
            rest.remove_prefix(dot + 1);
        }
        std::size_t common = 0;
        while (common < open.size() && common < parts.size() && open[common] == parts[common]) {
            ++common;
        }
        open.resize(common);
        for (std::size_t i = common; i < parts.size(); ++i) {
            if (i == 0 && out.tellp() > 0) out << "\n";
            out << std::string(2 * i, ' ') << parts[i] << ":\n";
            open.push_back(parts[i]);
        }
        std::string indent(2 * parts.size(), ' ');
        if (commented) {
            out << indent << "# " << setting.doc << "\n";
            out << indent << "# " << allowed_values(setting) << "; env " << env_name(setting.key);
            if (!setting.alias_env.empty()) out << " or " << setting.alias_env;
            out << "\n";
        }
        out << indent << rest << ": " << value(setting) << "\n";
    }
    return out.str();
}

std::string yaml_scalar(const std::string& text) {
    YAML::Emitter e;
    e << YAML::DoubleQuoted << text;
    return e.c_str();
}

}  // namespace

std::optional<std::string> process_env(const std::string& name) {
    const char* value = std::getenv(name.c_str());
    if (!value) return std::nullopt;
    return std::string(value);
}

Result<std::string> expand_variables(const std::string& value, const EnvLookup& env) {
    std::string out;
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] != '$' || i + 1 >= value.size()) {
            out += value[i];
            continue;
        }
        if (value[i + 1] == '$') {  // $$ is a literal $
            out += '$';
            ++i;
            continue;
        }
        if (value[i + 1] != '{') {
            out += value[i];
            continue;
        }
        std::size_t close = value.find('}', i + 2);
        if (close == std::string::npos) {
            return std::unexpected(
                config_error(fmt::format("unterminated '${{' in '{}'", redact(value)),
                             "close it with '}', or write $$ for a literal $"));
        }
        std::string inner = value.substr(i + 2, close - i - 2);
        std::optional<std::string> fallback;
        if (auto sep = inner.find(":-"); sep != std::string::npos) {
            fallback = inner.substr(sep + 2);
            inner.resize(sep);
        }
        bool valid = !inner.empty() && !std::isdigit(static_cast<unsigned char>(inner[0])) &&
                     std::all_of(inner.begin(), inner.end(),
                                 [](unsigned char c) { return std::isalnum(c) || c == '_'; });
        if (!valid) {
            return std::unexpected(config_error(
                fmt::format("'${{{}}}' is not a valid variable reference", inner),
                "use ${NAME} or ${NAME:-default} with NAME made of letters, digits and _"));
        }
        auto found = env(inner);
        if (found && !found->empty()) {
            out += *found;
        } else if (fallback) {
            out += *fallback;
        } else {
            return std::unexpected(config_error(
                fmt::format("environment variable {} is not set", inner),
                fmt::format("export {} or give a default: ${{{}:-value}}", inner, inner)));
        }
        i = close;
    }
    return out;
}

Result<Config> load_from_string(const std::string& yaml, const EnvLookup& env,
                                const std::string& source_name) {
    return load_node(yaml, env, source_name);
}

Result<Config> load(const LoadOptions& options) {
    std::string path;
    bool explicit_path = true;
    if (options.path) {
        path = *options.path;
    } else if (auto from_env = options.env("KNOWLEDGE_AGENT_CONFIG");
               from_env && !from_env->empty()) {
        path = *from_env;
    } else {
        path = default_config_path(options.env);
        explicit_path = false;
    }
    if (path.empty() || (!explicit_path && !std::filesystem::exists(path))) {
        return load_node(std::nullopt, options.env, "");
    }
    std::ifstream in(path);
    if (!in) {
        return std::unexpected(
            config_error(fmt::format("cannot read config file {}", path),
                         "check the path given with --config or KNOWLEDGE_AGENT_CONFIG"));
    }
    std::stringstream text;
    text << in.rdbuf();
    return load_node(text.str(), options.env, path);
}

std::string example_yaml() {
    std::string header =
        "# Knowledge Agent configuration: every key with its default.\n"
        "# Generated from the settings schema (`knowledge-agent config example`); see\n"
        "# docs/configuration.md. Values may use ${VAR} and ${VAR:-default}; every key can also\n"
        "# be set by the environment variable named below it, which wins over this file.\n\n";
    return header + render_yaml(
                        [](const Setting& s) {
                            return s.type == Type::string
                                       ? yaml_scalar(std::string(s.default_value))
                                       : std::string(s.default_value);
                        },
                        true);
}

std::string dump_yaml(const Config& config) {
    Config copy = config;
    return render_yaml(
        [&](const Setting& s) {
            FieldRef field = s.field(copy);
            if (auto* b = std::get_if<bool*>(&field)) return std::string(**b ? "true" : "false");
            if (auto* i = std::get_if<int*>(&field)) return std::to_string(**i);
            if (auto* keys = std::get_if<std::vector<ApiKey>*>(&field)) {
                std::vector<std::string> names;
                for (const auto& k : **keys)
                    names.push_back(fmt::format("{{name: {}, role: {}, scopes: [{}]}}", k.name,
                                                k.role, fmt::join(k.scopes, ", ")));
                return fmt::format("[{}]", fmt::join(names, ", "));
            }
            const std::string& text = *std::get<std::string*>(field);
            return yaml_scalar(s.secret ? redact(text) : text);
        },
        false);
}

}  // namespace ka::config
