// Digests and hex text, shared by the store (content hashes), the database module (migration
// checksums, the embedded cluster's password) and the HTTP API keys.
#pragma once

#include <string>
#include <string_view>

namespace ka {

std::string sha256(std::string_view data);  // the raw 32-byte digest
std::string hex(std::string_view bytes);    // two lower-case digits per byte

}  // namespace ka
