"""Fail a CI pass whose tests were skipped or too few passed: a silent skip is a failure.

Usage: check_junit.py JUNIT_XML PASS_NAME MIN_PASSED [--name-contains TEXT]
"""

import argparse
import sys
import xml.etree.ElementTree as ET

parser = argparse.ArgumentParser()
parser.add_argument("xml")
parser.add_argument("name")
parser.add_argument("min_passed", type=int)
parser.add_argument("--name-contains", default="", help="count only tests whose id has this")
args = parser.parse_args()

passed, skipped, failed = [], [], []
for case in ET.parse(args.xml).getroot().iter("testcase"):
    test_id = f"{case.get('classname')}::{case.get('name')}"
    if args.name_contains not in test_id:
        continue
    if case.find("skipped") is not None:
        skipped.append((test_id, case.find("skipped").get("message", "")))
    elif case.find("failure") is not None or case.find("error") is not None:
        failed.append(test_id)
    else:
        passed.append(test_id)

print(f"{args.name}: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
problems = []
if failed:
    problems.append(f"{len(failed)} failed")
if skipped:
    problems.append("skipped tests in a pass that must run them all:\n  " +
                    "\n  ".join(f"{t}: {m}" for t, m in skipped[:20]))
if len(passed) < args.min_passed:
    problems.append(f"only {len(passed)} tests passed, expected at least {args.min_passed}")
if problems:
    print(f"{args.name} pass FAILED: " + "; ".join(problems))
    sys.exit(1)
