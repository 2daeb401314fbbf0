#include "core/bytes.h"

#include <gtest/gtest.h>

namespace ka {
namespace {

TEST(Bytes, Sha256MatchesTheFips180Examples) {
    EXPECT_EQ(hex(sha256("abc")),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256("abc").size(), 32u);
}

TEST(Bytes, HexWritesTwoLowerCaseDigitsPerByte) {
    EXPECT_EQ(hex(std::string("\x00\x0f\xa0\xff", 4)), "000fa0ff");
    EXPECT_EQ(hex(""), "");
}

}  // namespace
}  // namespace ka
