#include "config/config.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>

#include "config/schema.h"

namespace ka::config {
namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
    return [vars](const std::string& name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
    };
}

Result<Config> parse(const std::string& yaml, std::map<std::string, std::string> env = {}) {
    return load_from_string(yaml, env_of(std::move(env)), "config.yaml");
}

TEST(Config, DefaultsMatchTheGuide) {
    auto c = parse("");
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_TRUE(c->embedded());
    EXPECT_EQ(c->postgres.pool_size, 10);
    EXPECT_EQ(c->postgres.connect_timeout, 10);
    EXPECT_EQ(c->embedding.dimensions, 768);
    EXPECT_EQ(c->index.hnsw.m, 16);
    EXPECT_EQ(c->index.hnsw.ef_construction, 128);
    EXPECT_EQ(c->search.ef_search, 40);
    EXPECT_EQ(c->search.exact_max_rows, 8000);
    EXPECT_EQ(c->search.exact_max_percent, 2);  // over 1%: estimates of 1% filters vary
    EXPECT_EQ(c->log.level, "info");
    EXPECT_EQ(c->log.format, "console");
    EXPECT_TRUE(c->migrations.auto_apply);
    EXPECT_EQ(c->postgres.embedded.run_as, "postgres");
}

TEST(Config, ReadsNestedKeys) {
    auto c = parse(
        "postgres:\n  url: postgres://u@h/db\n  pool_size: 4\n  embedded:\n    port: 6543\n"
        "index:\n  hnsw:\n    m: 32\n    ef_construction: 128\n"
        "search: {ef_search: 100}\nlog:\n  level: debug\n  format: json\nmigrations:\n  auto: "
        "false\n");
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->postgres.url, "postgres://u@h/db");
    EXPECT_FALSE(c->embedded());
    EXPECT_EQ(c->postgres.pool_size, 4);
    EXPECT_EQ(c->postgres.embedded.port, 6543);
    EXPECT_EQ(c->index.hnsw.m, 32);
    EXPECT_EQ(c->index.hnsw.ef_construction, 128);
    EXPECT_EQ(c->search.ef_search, 100);
    EXPECT_EQ(c->log.format, "json");
    EXPECT_FALSE(c->migrations.auto_apply);
}

TEST(Config, UnknownKeyNamesPathAndAllowedKeys) {
    auto c = parse("postgres:\n  pool: 4\n");
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, ErrorCode::config);
    EXPECT_NE(c.error().message.find("unknown config key 'postgres.pool'"), std::string::npos)
        << c.error().message;
    EXPECT_NE(c.error().message.find("line 2"), std::string::npos);
    EXPECT_NE(c.error().hint.find("pool_size"), std::string::npos) << c.error().hint;

    auto top = parse("postgress:\n  url: x\n");
    ASSERT_FALSE(top);
    EXPECT_NE(top.error().message.find("'postgress'"), std::string::npos);
}

TEST(Config, WrongTypesAndRangesSayWhatIsAllowed) {
    struct Case {
        std::string yaml, fragment;
    } cases[] = {
        {"postgres:\n  pool_size: many\n",
         "'postgres.pool_size' (config.yaml line 2): expected an integer from 1 to 1000, got "
         "'many'"},
        {"postgres:\n  pool_size: 0\n", "an integer from 1 to 1000, got '0'"},
        {"embedding:\n  dimensions: 4096\n", "'embedding.dimensions'"},
        {"index:\n  hnsw:\n    m: 1\n", "an integer from 2 to 100"},
        {"log:\n  level: verbose\n", "one of: debug, info, warn, error"},
        {"log:\n  format: xml\n", "one of: console, json"},
        {"migrations:\n  auto: maybe\n", "true or false"},
        {"search:\n  ef_search: [1, 2]\n", "got a list"},
        {"postgres: 5\n", "expected a mapping"},
        {"search:\n  ef_search: 1.5\n", "ef_search"},
    };
    for (const auto& test : cases) {
        auto c = parse(test.yaml);
        ASSERT_FALSE(c) << test.yaml;
        EXPECT_EQ(c.error().code, ErrorCode::config);
        EXPECT_NE(c.error().message.find(test.fragment), std::string::npos)
            << "yaml: " << test.yaml << "\nmessage: " << c.error().message;
    }
}

TEST(Config, CrossFieldRuleFromPgvector) {
    auto c = parse("index:\n  hnsw:\n    m: 48\n    ef_construction: 64\n");
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message.find("at least 2 x index.hnsw.m"), std::string::npos);
    EXPECT_NE(c.error().hint.find("96"), std::string::npos);
}

TEST(Config, InvalidYamlReportsPosition) {
    auto c = parse("postgres:\n  url: [unclosed\n");
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message.find("not valid YAML"), std::string::npos);
    EXPECT_NE(c.error().message.find("line"), std::string::npos);
}

TEST(Config, InvalidConnectionStringIsAConfigError) {
    auto c = parse("postgres:\n  url: \"host=db password='s3cr3tpw\"\n");
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message.find("postgres.url"), std::string::npos);
    EXPECT_EQ(c.error().message.find("s3cr3tpw"), std::string::npos)
        << "password leaked: " << c.error().message;
}

TEST(Config, ExpandsVariables) {
    auto c = parse(
        "postgres:\n  url: postgres://app:${DB_PASS}@${DB_HOST:-localhost}:5432/ka\n  pool_size: "
        "${POOL:-7}\n",
        {{"DB_PASS", "pw"}});
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->postgres.url, "postgres://app:pw@localhost:5432/ka");
    EXPECT_EQ(c->postgres.pool_size, 7);
}

TEST(Config, ExpansionEdgeCases) {
    auto env = env_of({{"A", "x"}, {"EMPTY", ""}});
    EXPECT_EQ(*expand_variables("$$HOME", env), "$HOME");
    EXPECT_EQ(*expand_variables("cost $5", env), "cost $5");
    EXPECT_EQ(*expand_variables("${A}${A}", env), "xx");
    EXPECT_EQ(*expand_variables("${EMPTY:-fallback}", env), "fallback");
    EXPECT_EQ(*expand_variables("${MISSING:-}", env), "");

    auto missing = expand_variables("${MISSING}", env);
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("MISSING is not set"), std::string::npos);
    EXPECT_FALSE(expand_variables("${A", env));
    EXPECT_FALSE(expand_variables("${1BAD}", env));
    EXPECT_FALSE(expand_variables("${A B}", env));
}

TEST(Config, MissingVariableNamesTheKey) {
    auto c = parse("postgres:\n  url: ${NOPE}\n");
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message.find("'postgres.url'"), std::string::npos);
    EXPECT_NE(c.error().message.find("NOPE"), std::string::npos);
}

TEST(Config, EnvironmentOverridesEveryKeyAndWinsOverFile) {
    std::map<std::string, std::string> env;
    for (const auto& s : settings()) {
        if (s.key == "postgres.url") continue;
        env[env_name(s.key)] =
            s.type == Type::key_list  ? std::string("[]")
            : s.type == Type::choice  ? std::string(s.choices.back())
            : s.type == Type::boolean ? "false"
            : s.type == Type::integer
                ? std::to_string(s.key == "index.hnsw.ef_construction" ? 1000 : s.min + 1)
                : "/from/env";
    }
    env["POSTGRES_URL"] = "postgres://from-alias/db";
    auto c = parse("postgres:\n  pool_size: 50\nlog:\n  level: debug\n", env);
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->postgres.pool_size, 2);
    EXPECT_EQ(c->log.level, "error");
    EXPECT_EQ(c->log.format, "json");
    EXPECT_FALSE(c->migrations.auto_apply);
    EXPECT_EQ(c->postgres.embedded.data_dir, "/from/env");
    EXPECT_EQ(c->postgres.url, "postgres://from-alias/db");
    EXPECT_EQ(c->index.hnsw.ef_construction, 1000);

    env["KNOWLEDGE_AGENT_POSTGRES_URL"] = "postgres://specific/db";
    EXPECT_EQ(parse("", env)->postgres.url, "postgres://specific/db");
}

TEST(Config, BadEnvironmentValueNamesTheVariable) {
    auto c = parse("", {{"KNOWLEDGE_AGENT_POSTGRES_POOL_SIZE", "lots"}});
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message.find("environment variable KNOWLEDGE_AGENT_POSTGRES_POOL_SIZE"),
              std::string::npos);
}

TEST(Config, SecretsAreRedactedInDumpAndErrors) {
    auto c = parse("postgres:\n  url: postgres://app:topsecret@db/ka\n");
    ASSERT_TRUE(c);
    std::string dump = dump_yaml(*c);
    EXPECT_EQ(dump.find("topsecret"), std::string::npos) << dump;
    EXPECT_NE(dump.find("postgres://app:***@db/ka"), std::string::npos) << dump;
}

TEST(Config, ApiKeysFromFileAndEnvironment) {
    std::string digest(64, 'a');
    auto c = parse(
        "auth:\n  keys:\n    - name: ci\n      key: ${CI_KEY}\n      role: write\n"
        "      scopes: [team-a, team-b]\n    - name: ops\n      key_sha256: " +
            digest + "\n      role: admin\n",
        {{"CI_KEY", "0123456789abcdef-ci"}});
    ASSERT_TRUE(c) << c.error().message;
    ASSERT_EQ(c->auth.keys.size(), 2u);
    EXPECT_EQ(c->auth.keys[0].key, "0123456789abcdef-ci");
    EXPECT_EQ(c->auth.keys[0].scopes, (std::vector<std::string>{"team-a", "team-b"}));
    EXPECT_EQ(c->auth.keys[1].key_sha256, digest);
    std::string dump = dump_yaml(*c);
    EXPECT_EQ(dump.find("0123456789abcdef-ci"), std::string::npos) << dump;
    EXPECT_NE(dump.find("name: ci"), std::string::npos) << dump;

    auto from_env = parse("", {{"KNOWLEDGE_AGENT_AUTH_KEYS",
                                R"([{"name":"bot","key":"bot-key-0123456789","role":"read"}])"}});
    ASSERT_TRUE(from_env) << from_env.error().message;
    ASSERT_EQ(from_env->auth.keys.size(), 1u);
    EXPECT_EQ(from_env->auth.keys[0].role, "read");
}

TEST(Config, BadApiKeysSayWhatIsWrong) {
    const std::string long_key = "0123456789abcdef";
    for (const auto& [yaml, expected] : std::vector<std::pair<std::string, std::string>>{
             {"{name: a, key: " + long_key + ", role: root}", "role must be one of"},
             {"{name: a, key: short, role: read}", "at least 16 characters"},
             {"{name: a, key: " + long_key + ", key_sha256: " + std::string(64, 'b') +
                  ", role: read}",
              "exactly one of key and key_sha256"},
             {"{name: a, key_sha256: XYZ, role: read}", "64 lower-case hex"},
             {"{name: a, key: " + long_key + ", role: read, team: x}", "unknown field 'team'"},
             {"{name: 'a b', key: " + long_key + ", role: read}", "name must be"},
             {"{name: a, key: " + long_key + ", role: read, scopes: x}", "scopes must be a list"},
         }) {
        auto c = parse("auth:\n  keys:\n    - " + yaml + "\n");
        ASSERT_FALSE(c) << yaml;
        EXPECT_NE(c.error().message.find("auth.keys"), std::string::npos) << c.error().message;
        EXPECT_NE(c.error().message.find(expected), std::string::npos) << c.error().message;
        EXPECT_EQ(c.error().message.find(long_key), std::string::npos) << c.error().message;
    }
    auto twice = parse("auth:\n  keys:\n    - {name: a, key: " + long_key +
                       "1, role: read}\n    - {name: a, key: " + long_key + "2, role: read}\n");
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.error().message.find("used twice"), std::string::npos);
    EXPECT_FALSE(parse("", {{"KNOWLEDGE_AGENT_AUTH_KEYS", "[{"}}));
}

TEST(Config, ProviderKeyIsRedactedInDump) {
    auto c = parse("", {{"OPENAI_API_KEY", "sk-very-secret-provider-key"}});
    ASSERT_TRUE(c);
    EXPECT_EQ(dump_yaml(*c).find("sk-very-secret-provider-key"), std::string::npos);
}

TEST(Config, ExampleFileInRepoMatchesSchema) {
    std::ifstream in(std::string(KA_SOURCE_DIR) + "/config-example.yaml");
    ASSERT_TRUE(in)
        << "config-example.yaml missing: generate it with `knowledge-agent config example`";
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), example_yaml())
        << "regenerate: knowledge-agent config example > config-example.yaml";
}

TEST(Config, ExampleParsesToDefaults) {
    auto c = parse(example_yaml());
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->embedding.dimensions, 768);
}

TEST(Config, LoadsFileFromOptionOrEnvironment) {
    auto dir = std::filesystem::temp_directory_path() / ("ka-config-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "a.yaml") << "search:\n  ef_search: 77\n";
    std::ofstream(dir / "b.yaml") << "search:\n  ef_search: 88\n";
    auto env = env_of({{"KNOWLEDGE_AGENT_CONFIG", (dir / "b.yaml").string()}});
    EXPECT_EQ(load({(dir / "a.yaml").string(), env})->search.ef_search, 77);
    EXPECT_EQ(load({std::nullopt, env})->search.ef_search, 88);
    auto missing = load({(dir / "nope.yaml").string(), env});
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("nope.yaml"), std::string::npos);
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ka::config
