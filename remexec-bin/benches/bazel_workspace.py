#!/usr/bin/env python3
"""Writes a Bazel workspace of realistic shape for remexec-bin/benches/thousand-actions.sh.

    bazel_workspace.py OUT_DIR [--levels 10] [--width 18] [--files 3]

Libraries in a DAG of depth LEVELS, WIDTH to a level: each has FILES C++ sources, a header
made by a genrule, and depends on two libraries of the level below. Every fourth library
above the first level has a cc_test; a binary links the top level. With the defaults about
1,000 actions: per library a genrule, FILES compiles and an archive; per test a compile, a
link and the test run; the binary's compile and link.

The sources include a few standard headers and do a little work, so that each compile costs
what a small real one does (a few hundred milliseconds), and every test checks a value
computed through its library's dependencies, so a wrong output fails the build.
"""

import argparse
import os
import textwrap


def lib_name(level, i):
    return f"l{level:02d}_{i:02d}"


def deps_of(level, i, width):
    if level == 0:
        return []
    return sorted({(level - 1, i), (level - 1, (i * 7 + 3) % width)})


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip())


def value(level, i, width, memo):
    """The value f(1) of library (level, i), as the C++ computes it."""
    key = (level, i)
    if key not in memo:
        total = level * 1000 + i
        for d in deps_of(level, i, width):
            total += value(*d, width, memo)
        memo[key] = total % 1000003
    return memo[key]


def library(out, level, i, width, files):
    name = lib_name(level, i)
    d = os.path.join(out, "libs", name)
    deps = deps_of(level, i, width)
    dep_labels = "".join(f'"//libs/{lib_name(*x)}:lib", ' for x in deps)
    srcs = "".join(f'"f{k}.cc", ' for k in range(files))
    write(
        os.path.join(d, "BUILD"),
        f"""
        load("@rules_cc//cc:defs.bzl", "cc_library", "cc_test")

        package(default_visibility = ["//visibility:public"])

        genrule(
            name = "table",
            outs = ["table.h"],
            cmd = "echo '#pragma once' > $@ && echo '#define {name.upper()}_BASE {level * 1000 + i}' >> $@",
        )

        cc_library(
            name = "lib",
            srcs = [{srcs}],
            hdrs = ["lib.h", ":table"],
            deps = [{dep_labels}],
            linkstatic = True,
        )
        """,
    )
    includes = "".join(f'#include "libs/{lib_name(*x)}/lib.h"\n' for x in deps)
    parts = " + ".join(
        [f"{name.upper()}_BASE"] + [f"{lib_name(*x)}::value()" for x in deps]
    )
    write(
        os.path.join(d, "lib.h"),
        f"""
        #pragma once
        #include <string>
        namespace {name} {{
        long value();
        {"".join(f"std::string part{k}(int n);" for k in range(files))}
        }}
        """,
    )
    write(
        os.path.join(d, "f0.cc"),
        f"""
        #include "libs/{name}/lib.h"
        #include "libs/{name}/table.h"
        {includes}
        namespace {name} {{
        long value() {{ return ({parts}) % 1000003; }}
        }}
        """,
    )
    for k in range(files):
        path = os.path.join(d, f"f{k}.cc")
        head = open(path).read() if k == 0 else f'#include "libs/{name}/lib.h"\n'
        with open(path, "w") as f:
            f.write(head)
            f.write(
                textwrap.dedent(
                    f"""
                    #include <algorithm>
                    #include <map>
                    #include <sstream>
                    #include <vector>
                    namespace {name} {{
                    std::string part{k}(int n) {{
                      std::vector<int> v;
                      for (int j = 0; j < n; ++j) v.push_back((j * {k + 3}) % 17);
                      std::sort(v.begin(), v.end());
                      std::map<int, int> counts;
                      for (int x : v) ++counts[x];
                      std::ostringstream s;
                      for (const auto& [key, count] : counts) s << key << ':' << count << ',';
                      return s.str();
                    }}
                    }}
                    """
                )
            )


def test(out, level, i, width):
    name = lib_name(level, i)
    d = os.path.join(out, "libs", name)
    expected = value(level, i, width, {})
    with open(os.path.join(d, "BUILD"), "a") as f:
        f.write(
            textwrap.dedent(
                f"""
                cc_test(
                    name = "test",
                    size = "small",
                    srcs = ["test.cc"],
                    deps = [":lib"],
                )
                """
            )
        )
    write(
        os.path.join(d, "test.cc"),
        f"""
        #include <cstdio>
        #include "libs/{name}/lib.h"
        int main() {{
          long got = {name}::value();
          if (got != {expected}L || {name}::part0(5).empty()) {{
            std::printf("{name}: got %ld, want {expected}\\n", got);
            return 1;
          }}
          return 0;
        }}
        """,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--width", type=int, default=18)
    p.add_argument("--files", type=int, default=3)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, "WORKSPACE"), 'workspace(name = "remexec_bench")\n')
    for level in range(a.levels):
        for i in range(a.width):
            library(a.out, level, i, a.width, a.files)
            if level > 0 and i % 4 == 0:
                test(a.out, level, i, a.width)
    top = a.levels - 1
    deps = "".join(f'"//libs/{lib_name(top, i)}:lib", ' for i in range(a.width))
    write(
        os.path.join(a.out, "BUILD"),
        f"""
        load("@rules_cc//cc:defs.bzl", "cc_binary")

        cc_binary(
            name = "app",
            srcs = ["app.cc"],
            deps = [{deps}],
        )
        """,
    )
    calls = " + ".join(f"{lib_name(top, i)}::value()" for i in range(a.width))
    includes = "".join(f'#include "libs/{lib_name(top, i)}/lib.h"\n' for i in range(a.width))
    write(
        os.path.join(a.out, "app.cc"),
        f"""
        #include <cstdio>
        {includes}
        int main() {{ std::printf("%ld\\n", {calls}); return 0; }}
        """,
    )
    libs = a.levels * a.width
    tests = sum(1 for lv in range(1, a.levels) for i in range(a.width) if i % 4 == 0)
    actions = libs * (a.files + 2) + tests * 3 + 2
    print(f"{libs} libraries, {tests} tests, about {actions} actions")


if __name__ == "__main__":
    main()
