"""Intermediate-step counter (same definition as issue 21 / branch m21), for scratch measurements."""
import re
from decimal import Decimal
from aha.tasks._common import last_answer, parse_number

NUM = r"-?\d+(?:\.\d+)?"
OP = r"[-+*/x×÷]"
STMT = re.compile(rf"({NUM})((?:\s*{OP}\s*{NUM})+)\s*=\s*({NUM})")
ANY_NUM = re.compile(r"-?[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?")


def final_answer(text):
    a = last_answer(text)
    if a is not None:
        n = parse_number(a)
        if n is not None:
            return n
        return None
    last = None
    for m in ANY_NUM.finditer(text):
        last = m.group()
    return parse_number(last) if last is not None else None


def steps(text):
    """text = prefill + completion."""
    fin = final_answer(text)
    cut = text.find("<answer>")
    head = text if cut < 0 else text[:cut]
    n = 0
    for m in STMT.finditer(head):
        r = parse_number(m.group(3))
        if r is None:
            continue
        if fin is None or Decimal(r) != Decimal(fin):
            n += 1
    return n


def lenient_ok(text, gold):
    fin = final_answer(text)
    return fin is not None and Decimal(fin) == Decimal(str(gold))


if __name__ == "__main__":
    assert steps("<think>\n3 + 5 = 8\n8 + 7 = 15\n</think>\n<answer>\n15\n</answer>") == 1
    assert steps("<think>\n3 + 5 + 7 = 15\n</think>\n<answer>\n15\n</answer>") == 0
    assert steps("<think>\n3 + 5 = 8\n8 + 7 = 15") == 1
    print("ok")
