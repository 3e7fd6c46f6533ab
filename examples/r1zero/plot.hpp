// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// A self-contained PNG writer and a small line-chart renderer for the trainers' metric plots:
// no zlib, no libpng. The image data is deflated here (one fixed-Huffman block with greedy LZ77
// matches); CRC-32 and Adler-32 are computed here too. Text uses a built-in 5x7 font.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace r1zero::plot {

struct rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

inline std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t c = 0) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t x = i;
      for (int k = 0; k < 8; ++k) x = (x & 1) ? 0xEDB88320u ^ (x >> 1) : x >> 1;
      t[i] = x;
    }
    return t;
  }();
  c = ~c;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return ~c;
}

/// A zlib stream of `data`: one deflate block with the fixed Huffman codes, and greedy LZ77
/// matches taken from a 3-byte hash and from the distances in `hints` (for an image: one pixel
/// back and one row back, which is where a chart's flat areas repeat). Simple, and a few
/// hundred times smaller than stored blocks on a chart.
inline std::vector<std::uint8_t> zlib_compress(const std::vector<std::uint8_t>& data,
                                               std::initializer_list<std::size_t> hints) {
  std::vector<std::uint8_t> out{0x78, 0x01};
  std::uint32_t bitbuf = 0;
  int bitcount = 0;
  auto bits = [&](std::uint32_t v, int n) {  // n bits of v, least significant first
    bitbuf |= v << bitcount;
    bitcount += n;
    while (bitcount >= 8) {
      out.push_back(std::uint8_t(bitbuf & 0xFF));
      bitbuf >>= 8;
      bitcount -= 8;
    }
  };
  auto huff = [&](std::uint32_t code, int n) {  // Huffman codes go most significant bit first
    for (int k = n - 1; k >= 0; --k) bits((code >> k) & 1u, 1);
  };
  auto literal = [&](unsigned v) {  // literal/length symbol 0..287 with the fixed code
    if (v < 144) huff(0x30 + v, 8);
    else if (v < 256) huff(0x190 + (v - 144), 9);
    else if (v < 280) huff(v - 256, 7);
    else huff(0xC0 + (v - 280), 8);
  };
  static const unsigned len_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                        31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
  static const int len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
  static const unsigned dist_base[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                         193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
  static const int dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
  bits(1, 1);  // BFINAL
  bits(1, 2);  // BTYPE = 01, fixed Huffman codes
  const std::size_t n = data.size(), window = 32768;
  std::vector<std::int64_t> head(1u << 15, -1);
  auto hash = [&](std::size_t i) {
    return ((std::uint32_t(data[i]) << 10) ^ (std::uint32_t(data[i + 1]) << 5) ^ data[i + 2]) & 0x7FFFu;
  };
  auto match_len = [&](std::size_t i, std::size_t j) {
    std::size_t l = 0;
    while (l < 258 && i + l < n && data[j + l] == data[i + l]) ++l;
    return l;
  };
  std::size_t i = 0;
  while (i < n) {
    std::size_t best = 0, dist = 0;
    if (i + 2 < n) {
      const std::int64_t j = head[hash(i)];
      if (j >= 0 && i - std::size_t(j) <= window) {
        const std::size_t l = match_len(i, std::size_t(j));
        if (l > best) best = l, dist = i - std::size_t(j);
      }
      for (std::size_t d : hints)
        if (d >= 1 && d <= i && d <= window) {
          const std::size_t l = match_len(i, i - d);
          if (l > best) best = l, dist = d;
        }
    }
    if (best >= 3) {
      int c = 28;
      while (len_base[c] > best) --c;
      literal(257u + unsigned(c));
      bits(std::uint32_t(best - len_base[c]), len_extra[c]);
      int dc = 29;
      while (dist_base[dc] > dist) --dc;
      huff(std::uint32_t(dc), 5);
      bits(std::uint32_t(dist - dist_base[dc]), dist_extra[dc]);
      for (std::size_t k = 0; k < best; ++k, ++i)
        if (i + 2 < n) head[hash(i)] = std::int64_t(i);
    } else {
      literal(data[i]);
      if (i + 2 < n) head[hash(i)] = std::int64_t(i);
      ++i;
    }
  }
  literal(256);  // end of block
  if (bitcount > 0) bits(0, 8 - bitcount);
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t v : data) {
    a = (a + v) % 65521;
    b = (b + a) % 65521;
  }
  const std::uint32_t adler = (b << 16) | a;
  for (int sh = 24; sh >= 0; sh -= 8) out.push_back(std::uint8_t(adler >> sh));
  return out;
}

/// Writes an 8-bit RGB PNG of `w` x `h` pixels (row-major `pixels`, w*h entries).
inline void write_png(const std::string& path, int w, int h, const std::vector<rgb>& pixels) {
  if (w <= 0 || h <= 0 || pixels.size() != std::size_t(w) * std::size_t(h))
    throw std::invalid_argument("write_png: pixels must hold w*h entries");
  // Raw scanlines: filter byte 0, then RGB.
  std::vector<std::uint8_t> raw;
  raw.reserve(std::size_t(h) * (1 + 3 * std::size_t(w)));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int x = 0; x < w; ++x) {
      const rgb& c = pixels[std::size_t(y) * w + x];
      raw.push_back(c.r);
      raw.push_back(c.g);
      raw.push_back(c.b);
    }
  }
  const std::vector<std::uint8_t> z = zlib_compress(raw, {3, 1 + 3 * std::size_t(w)});
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("write_png: cannot open " + path);
  auto be32 = [](std::vector<std::uint8_t>& o, std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) o.push_back(std::uint8_t(v >> s));
  };
  auto chunk = [&](const char* type, const std::vector<std::uint8_t>& data) {
    std::vector<std::uint8_t> c;
    be32(c, std::uint32_t(data.size()));
    c.insert(c.end(), type, type + 4);
    c.insert(c.end(), data.begin(), data.end());
    be32(c, crc32(c.data() + 4, c.size() - 4));
    std::fwrite(c.data(), 1, c.size(), f);
  };
  static const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::fwrite(sig, 1, 8, f);
  std::vector<std::uint8_t> ihdr;
  be32(ihdr, std::uint32_t(w));
  be32(ihdr, std::uint32_t(h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, no filter, no interlace
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  if (std::fclose(f) != 0) throw std::runtime_error("write_png: cannot write " + path);
}

/// 5x7 glyphs: 7 rows of 5 bits (bit 4 = leftmost column). Lowercase is drawn as uppercase.
inline const std::uint8_t* glyph(char ch) {
  struct entry {
    char c;
    std::uint8_t rows[7];
  };
  static const entry font[] = {
      {'0', {14, 17, 19, 21, 25, 17, 14}}, {'1', {4, 12, 4, 4, 4, 4, 14}},     {'2', {14, 17, 1, 2, 4, 8, 31}},
      {'3', {30, 1, 1, 14, 1, 1, 30}},     {'4', {2, 6, 10, 18, 31, 2, 2}},    {'5', {31, 16, 30, 1, 1, 17, 14}},
      {'6', {6, 8, 16, 30, 17, 17, 14}},   {'7', {31, 1, 2, 4, 8, 8, 8}},      {'8', {14, 17, 17, 14, 17, 17, 14}},
      {'9', {14, 17, 17, 15, 1, 2, 12}},   {'A', {14, 17, 17, 31, 17, 17, 17}}, {'B', {30, 17, 17, 30, 17, 17, 30}},
      {'C', {14, 17, 16, 16, 16, 17, 14}}, {'D', {30, 17, 17, 17, 17, 17, 30}}, {'E', {31, 16, 16, 30, 16, 16, 31}},
      {'F', {31, 16, 16, 30, 16, 16, 16}}, {'G', {14, 17, 16, 23, 17, 17, 15}}, {'H', {17, 17, 17, 31, 17, 17, 17}},
      {'I', {14, 4, 4, 4, 4, 4, 14}},      {'J', {7, 2, 2, 2, 2, 18, 12}},     {'K', {17, 18, 20, 24, 20, 18, 17}},
      {'L', {16, 16, 16, 16, 16, 16, 31}}, {'M', {17, 27, 21, 21, 17, 17, 17}}, {'N', {17, 17, 25, 21, 19, 17, 17}},
      {'O', {14, 17, 17, 17, 17, 17, 14}}, {'P', {30, 17, 17, 30, 16, 16, 16}}, {'Q', {14, 17, 17, 17, 21, 18, 13}},
      {'R', {30, 17, 17, 30, 20, 18, 17}}, {'S', {15, 16, 16, 14, 1, 1, 30}},   {'T', {31, 4, 4, 4, 4, 4, 4}},
      {'U', {17, 17, 17, 17, 17, 17, 14}}, {'V', {17, 17, 17, 17, 17, 10, 4}},  {'W', {17, 17, 17, 21, 21, 21, 10}},
      {'X', {17, 17, 10, 4, 10, 17, 17}},  {'Y', {17, 17, 10, 4, 4, 4, 4}},     {'Z', {31, 1, 2, 4, 8, 16, 31}},
      {'.', {0, 0, 0, 0, 0, 12, 12}},      {',', {0, 0, 0, 0, 12, 4, 8}},      {'-', {0, 0, 0, 31, 0, 0, 0}},
      {'+', {0, 4, 4, 31, 4, 4, 0}},       {'/', {1, 1, 2, 4, 8, 16, 16}},     {':', {0, 12, 12, 0, 12, 12, 0}},
      {'%', {24, 25, 2, 4, 8, 19, 3}},     {'@', {14, 17, 1, 13, 21, 21, 14}}, {'(', {2, 4, 8, 8, 8, 4, 2}},
      {')', {8, 4, 2, 2, 2, 4, 8}},        {'=', {0, 0, 31, 0, 31, 0, 0}},     {'_', {0, 0, 0, 0, 0, 0, 31}},
      {'[', {14, 8, 8, 8, 8, 8, 14}},      {']', {14, 2, 2, 2, 2, 2, 14}},     {'<', {2, 4, 8, 16, 8, 4, 2}},
      {'>', {8, 4, 2, 1, 2, 4, 8}},        {'*', {0, 4, 21, 14, 21, 4, 0}},
  };
  if (ch >= 'a' && ch <= 'z') ch = char(ch - 'a' + 'A');
  for (const entry& e : font)
    if (e.c == ch) return e.rows;
  return nullptr;  // space and anything unknown draw nothing
}

/// An RGB raster with the few drawing operations the charts need.
class canvas {
 public:
  canvas(int w, int h, rgb bg = {255, 255, 255}) : w_(w), h_(h), px_(std::size_t(w) * std::size_t(h), bg) {}
  [[nodiscard]] int width() const { return w_; }
  [[nodiscard]] int height() const { return h_; }
  void set(int x, int y, rgb c) {
    if (x >= 0 && y >= 0 && x < w_ && y < h_) px_[std::size_t(y) * w_ + x] = c;
  }
  void fill_rect(int x0, int y0, int x1, int y1, rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, c);
  }
  void rect(int x0, int y0, int x1, int y1, rgb c) {
    for (int x = x0; x <= x1; ++x) set(x, y0, c), set(x, y1, c);
    for (int y = y0; y <= y1; ++y) set(x0, y, c), set(x1, y, c);
  }
  /// A line `thick` pixels wide (Bresenham with a square pen).
  void line(int x0, int y0, int x1, int y1, rgb c, int thick = 1) {
    int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1, dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
      for (int a = 0; a < thick; ++a)
        for (int b = 0; b < thick; ++b) set(x0 + a - thick / 2, y0 + b - thick / 2, c);
      if (x0 == x1 && y0 == y1) break;
      int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  /// Text with its top-left corner at (x, y), each font pixel drawn `scale` x `scale`.
  void text(int x, int y, const std::string& s, rgb c, int scale = 1) {
    for (char ch : s) {
      if (const std::uint8_t* g = glyph(ch))
        for (int r = 0; r < 7; ++r)
          for (int k = 0; k < 5; ++k)
            if (g[r] & (16 >> k)) fill_rect(x + k * scale, y + r * scale, x + k * scale + scale - 1, y + r * scale + scale - 1, c);
      x += 6 * scale;
    }
  }
  static int text_width(const std::string& s, int scale = 1) { return int(s.size()) * 6 * scale; }
  void save(const std::string& path) const { write_png(path, w_, h_, px_); }

 private:
  int w_, h_;
  std::vector<rgb> px_;
};

/// One curve of a panel: points (x, y); NaN y values are gaps (steps without an evaluation).
struct series {
  std::string label;
  rgb color{};
  std::vector<double> x, y;
};

struct panel {
  std::string title;
  std::vector<series> curves;
};

inline std::string fmt_tick(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (a != 0 && (a < 0.01 || a >= 1e5))
    std::snprintf(buf, sizeof buf, "%.1e", v);
  else if (a < 10)
    std::snprintf(buf, sizeof buf, "%.2f", v);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

/// Draws `panels` in a grid of `cols` columns under a title line, with a legend, and writes the
/// PNG. Each panel has its own y range (from its data, padded by 5%).
inline void draw_panels(const std::string& path, const std::string& title, const std::vector<panel>& panels,
                        int cols = 3, int pw = 420, int ph = 260) {
  const int rows = (int(panels.size()) + cols - 1) / cols;
  const int top = 40;
  canvas cv(cols * pw, top + rows * ph);
  cv.text(10, 10, title, {0, 0, 0}, 2);
  // Legend from the first panel's curves.
  if (!panels.empty()) {
    int lx = cv.width() - 10;
    for (auto it = panels[0].curves.rbegin(); it != panels[0].curves.rend(); ++it) {
      lx -= canvas::text_width(it->label, 2) + 30;
      cv.fill_rect(lx, 14, lx + 18, 20, it->color);
      cv.text(lx + 24, 10, it->label, {0, 0, 0}, 2);
    }
  }
  const rgb axis{60, 60, 60}, grid{225, 225, 225};
  for (std::size_t p = 0; p < panels.size(); ++p) {
    const int ox = int(p % std::size_t(cols)) * pw, oy = top + int(p / std::size_t(cols)) * ph;
    const int x0 = ox + 60, x1 = ox + pw - 15, y0 = oy + 24, y1 = oy + ph - 30;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (const series& s : panels[p].curves)
      for (std::size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.y[i])) {
          xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
          ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
        }
    cv.text(ox + 60, oy + 8, panels[p].title, {0, 0, 0}, 1);
    if (!(xmin <= xmax)) {
      cv.rect(x0, y0, x1, y1, axis);
      continue;
    }
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax - ymin < 1e-12) ymin -= 0.5, ymax += 0.5;
    const double pad = 0.05 * (ymax - ymin);
    ymin -= pad, ymax += pad;
    auto X = [&](double v) { return x0 + int(std::lround((v - xmin) / (xmax - xmin) * (x1 - x0))); };
    auto Y = [&](double v) { return y1 - int(std::lround((v - ymin) / (ymax - ymin) * (y1 - y0))); };
    for (int k = 0; k <= 4; ++k) {
      const double yv = ymin + (ymax - ymin) * k / 4.0, xv = xmin + (xmax - xmin) * k / 4.0;
      const int yy = Y(yv), xx = X(xv);
      cv.line(x0, yy, x1, yy, grid);
      cv.line(xx, y0, xx, y1, grid);
      const std::string ys = fmt_tick(yv), xs = fmt_tick(xv);
      cv.text(x0 - 6 - canvas::text_width(ys), yy - 3, ys, axis);
      cv.text(xx - canvas::text_width(xs) / 2, y1 + 8, xs, axis);
    }
    cv.rect(x0, y0, x1, y1, axis);
    for (const series& s : panels[p].curves) {
      int px = 0, py = 0;
      bool have = false;
      const bool sparse = s.x.size() < 60;
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.y[i])) continue;  // a gap: join the neighbouring points
        const int qx = X(s.x[i]), qy = Y(s.y[i]);
        if (have) cv.line(px, py, qx, qy, s.color, 2);
        if (sparse) cv.fill_rect(qx - 2, qy - 2, qx + 2, qy + 2, s.color);
        px = qx, py = qy, have = true;
      }
    }
  }
  cv.save(path);
}

}  // namespace r1zero::plot
