// Fuzzes vector input: the `embedding` array of an import line or POST body (export writes
// pgvector's text form `[1,2,3]` there verbatim, so that is the text parsed on re-import).
// First byte 0..127: the rest is the embedding's JSON text. Otherwise the rest is raw floats,
// written as a JSON array the way an export would, read back, and must round-trip bit for bit
// when the vector is valid (finite, kDimensions long, non-zero) and be refused otherwise.
// Accepted vectors must also encode to pgvector's binary format and decode to the same floats.
#include <arpa/inet.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "offline_store.h"
#include "store/internal.h"
#include "store/store.h"

namespace {

using nlohmann::json;

void check_binary(const ka::embed::Vector& v) {
    std::string wire = ka::store::detail::vector_binary(v);
    ka::fuzz::require(wire.size() == 4 + 4 * v.size(), "binary vector of the wrong size");
    std::uint16_t dims = 0;
    std::memcpy(&dims, wire.data(), 2);
    ka::fuzz::require(ntohs(dims) == v.size(), "binary vector with the wrong dimension count");
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::uint32_t bits = 0;
        std::memcpy(&bits, wire.data() + 4 + 4 * i, 4);
        bits = ntohl(bits);
        float x = 0;
        std::memcpy(&x, &bits, 4);
        ka::fuzz::require(std::memcmp(&x, &v[i], 4) == 0, "binary vector does not round-trip");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const ka::config::Config config = ka::fuzz::fuzz_config();
    if (size == 0) return 0;
    const bool as_text = data[0] < 128;
    ++data;
    --size;
    std::string line;
    std::vector<float> original;
    if (as_text) {
        line = R"({"content":"vector","embedding":)" +
               std::string(reinterpret_cast<const char*>(data), size) + "}";
    } else {
        original.resize(size / 4);
        if (!original.empty()) std::memcpy(original.data(), data, original.size() * 4);
        json values = json::array();
        for (float x : original) values.push_back(x);  // NaN and infinity become null
        line = json{{"content", "vector"}, {"embedding", values}}.dump();
    }
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) {
        ka::fuzz::require(as_text, "an exported vector is not valid JSON", line);
        return 0;
    }
    auto parsed = ka::store::parse_entry(j, "default", config);
    if (parsed && parsed->embedding) {
        const auto& v = *parsed->embedding;
        ka::fuzz::require(v.size() == static_cast<std::size_t>(ka::fuzz::kDimensions),
                          "embedding of the wrong size accepted");
        double norm = 0;
        for (float x : v) {
            ka::fuzz::require(std::isfinite(x), "non-finite embedding accepted");
            norm += static_cast<double>(x) * x;
        }
        ka::fuzz::require(norm > 0, "zero embedding accepted");
        check_binary(v);
    } else if (parsed) {
        ka::fuzz::require(as_text, "an embedding disappeared");
    } else {
        ka::fuzz::require(parsed.error().code == ka::ErrorCode::invalid_argument,
                          "vector refused with a code other than invalid_argument");
    }
    if (!as_text) {
        double norm = 0;
        bool finite = true;
        for (float x : original) {
            finite = finite && std::isfinite(x);
            norm += static_cast<double>(x) * x;
        }
        bool valid = finite && norm > 0 &&
                     original.size() == static_cast<std::size_t>(ka::fuzz::kDimensions);
        ka::fuzz::require(valid == parsed.has_value(), "valid vector refused or invalid accepted",
                          line);
        if (valid) {
            ka::fuzz::require(
                std::memcmp(parsed->embedding->data(), original.data(), original.size() * 4) == 0,
                "vector changed on its way through JSON", line);
        }
    }
    return 0;
}
