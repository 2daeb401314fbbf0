// Fuzzes configuration loading: arbitrary bytes as config.yaml, with a fixed environment (so
// ${VAR} expansion has something to find). Loading either succeeds or returns an error; it never
// throws or crashes, and a loaded configuration can always be shown (`config show`).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "config/config.h"
#include "offline_store.h"

namespace {

std::optional<std::string> fixed_env(const std::string& name) {
    if (name == "KA_FUZZ_TEXT") return "from the environment";
    if (name == "KA_FUZZ_NUMBER") return "42";
    if (name == "KA_FUZZ_EMPTY") return "";
    if (name == "POSTGRES_URL") return "host=/nonexistent dbname=fuzz";
    if (name == "KNOWLEDGE_AGENT_LOG_LEVEL") return "warn";
    return std::nullopt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto loaded = ka::config::load_from_string(text, fixed_env, "<fuzz>");
    if (loaded) {
        std::string shown = ka::config::dump_yaml(*loaded);
        ka::fuzz::require(!shown.empty(), "dump_yaml returned nothing");
    } else {
        ka::fuzz::require(!loaded.error().message.empty(), "config error without a message");
    }
    auto expanded = ka::config::expand_variables(text, fixed_env);
    if (!expanded)
        ka::fuzz::require(!expanded.error().message.empty(), "expansion error without a message");
    return 0;
}
