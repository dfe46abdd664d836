"""Test-only: the official E²VPT code's pruning choices (ChengHan111/E2VPT, ``Trainer.
determine_mask_sequence``, ``what_tokens_to_mask``, ``what_tokens_pieces_to_mask``,
``find_best_MtMtp``) re-stated the way its loops do them, in plain Python: percents with
``int(N * p / 100)``, cumulative steps over one ``sorted`` order, and the find-best loop over
results in the order given. No code shared with mmvpt.engine.e2vpt_pruning."""

OFFICIAL_PERCENTS = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def mask_sequence(total, percents=OFFICIAL_PERCENTS, minimum=1):
    """The counts the official code writes a mask file for (their distinct values)."""
    numbers = []
    for percent in percents:
        n = int(total * percent / 100)
        if minimum > 0 and n > total - minimum:
            numbers.append(total - minimum)
            break
        numbers.append(n)
    numbers = sorted(numbers)
    # The official steps: the first count, then the differences, applied cumulatively; the
    # files are named after the cumulative counts, so a 0 step rewrites the same file.
    steps = [numbers[0]] + [b - a for a, b in zip(numbers, numbers[1:])]
    files, cumulative = [], 0
    for step in steps:
        cumulative += step
        if cumulative not in files:
            files.append(cumulative)
    return sorted(files)


def masked_in_order(scores, step_counts):
    """Indices masked after each cumulative step, as ``what_tokens_to_mask`` picks them: the
    (index, score) pairs sorted by score (stable), indices already taken skipped."""
    ranked = sorted(enumerate(scores), key=lambda pair: pair[1])
    masked, after = [], []
    for step in step_counts:
        added = 0
        for index, _ in ranked:
            if added == step:
                break
            if index not in masked:
                masked.append(index)
                added += 1
        after.append(list(masked))
    return after


def token_mask(scores, count):
    """0/1 list over the tokens with ``count`` masked (``scores``: a list of floats)."""
    masked = masked_in_order(scores, [count])[-1]
    return [0. if k in masked else 1. for k in range(len(scores))]


def piece_mask(scores, count):
    """0/1 rows with ``count`` pieces of every token masked (``scores``: rows of floats)."""
    return [token_mask(row, count) for row in scores]


def find_best(results):
    """``find_best_MtMtp`` over ``results`` (dicts tokens, pieces, score) in the given order:
    (tokens, pieces) of the winner."""
    best_tokens = best_pieces = None
    best_score = -1
    for result in results:
        score, tokens, pieces = result['score'], result['tokens'], result['pieces']
        if score == best_score:
            if best_tokens is not None and best_tokens < tokens:
                best_tokens, best_pieces, best_score = tokens, pieces, score
        elif score > best_score:
            best_tokens, best_pieces, best_score = tokens, pieces, score
    return best_tokens, best_pieces
