// Text helpers shared by the embedding providers.
#pragma once

#include <string>
#include <string_view>

namespace ka::embed {

// The first max_chars characters (code points) of UTF-8 text, never cutting a character.
// Providers embed at most embedding.max_input_chars characters; the stored text is unaffected.
inline std::string_view truncate_utf8(std::string_view text, std::size_t max_chars) {
    std::size_t chars = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
            if (chars == max_chars) return text.substr(0, i);
            ++chars;
        }
    }
    return text;
}

}  // namespace ka::embed
