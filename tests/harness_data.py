"Small local datasets in the shape of the Hugging Face ones lm-eval's catalogue reads (same fields, same split names)."
import json, re
from pathlib import Path


def _write(folder:Path, split:str, rows:list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def mmlu_rows():
    "MMLU development questions (from lm-eval's own chain-of-thought prompts) as cais/mmlu rows: question, subject, choices, answer."
    import importlib.util
    f = Path(list(importlib.util.find_spec('lm_eval').submodule_search_locations)[0]) / 'tasks/mmlu/flan_cot_fewshot/_cot_prompts.json'
    q_re = re.compile(r"Q: (.*?)\n\(A\) (.*?) \(B\) (.*?) \(C\) (.*?) \(D\) (.*?)\nA: .*?answer is \(([ABCD])\)", re.S)
    return {s: [{'question': q, 'subject': s, 'choices': [a, b, c, d], 'answer': 'ABCD'.index(ans)} for q, a, b, c, d, ans in q_re.findall(t)]
            for s, t in json.loads(f.read_text()).items()}


HELLASWAG = [  # Rowan/hellaswag's fields; WikiHow-style brackets so that lm-eval's process_docs has work to do
    ('Making a sandwich', 'A man lays two slices of bread on a kitchen counter.', 'he',
     ['spreads butter on one slice and adds cheese and ham.', 'throws the bread into the swimming pool.',
      'starts running around the field with a ball.', 'paints the wall of the garage blue.'], 0),
    ('Washing dishes', 'A woman fills the sink with warm water and soap.', 'she',
     ['climbs onto the roof of the house.', 'scrubs the plates with a sponge and rinses them.', 'plays a song on the violin.',
      'drives the car to the airport.'], 1),
    ('Home and Garden', '[title] How to plant tomatoes. [step] Choose a sunny spot in your garden.', 'then',
     ['[substeps] Put the seedlings in the freezer.', 'Sell the garden to a neighbour.',
      'Dig a hole deep enough for the roots and place the seedling in it.', 'Read a book about the history of Rome.'], 2),
    ('Playing guitar', 'A boy sits on a chair holding an acoustic guitar.', 'he',
     ['eats the guitar strings one by one.', 'flies away over the mountains.', 'jumps into a lake with his shoes on.',
      'strums the strings and sings along to the melody.'], 3),
    ('Ironing clothes', 'A person lays a wrinkled shirt flat on an ironing board.', 'the person',
     ['moves the hot iron slowly across the fabric.', 'puts the shirt in the oven at high heat.', 'plants the shirt in the garden.',
      'mails the ironing board to a friend.'], 0),
    ('Education and Communications', '[title] How to write a letter. [step] Write the date at the top of the page.', '[step]',
     ['Set the letter on fire.', 'Begin with a greeting such as "dear" followed by the name.', 'Fold the page into a paper plane.',
      'Eat the envelope before writing.'], 1),
]

GSM8K = [
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "Tom starts with 3 apples.\nHe buys 5 more, so 3 + 5 = <<3+5=8>>8.\n#### 8"),
    ("A box holds 12 pencils. How many pencils are in 4 boxes?", "Each box holds 12 pencils.\n4 boxes hold 4 * 12 = <<4*12=48>>48 pencils.\n#### 48"),
    ("Sara had 20 dollars and spent 7 dollars on lunch. How much money does she have left?", "She spent 7 of her 20 dollars.\n20 - 7 = <<20-7=13>>13.\n#### 13"),
    ("A train travels 60 miles per hour for 3 hours. How far does it go?", "Distance is speed times time.\n60 * 3 = <<60*3=180>>180 miles.\n#### 180"),
    ("There are 24 students split equally into 6 groups. How many students are in each group?", "24 / 6 = <<24/6=4>>4 students.\n#### 4"),
    ("John reads 10 pages a day. How many pages does he read in a week?", "A week has 7 days.\n10 * 7 = <<10*7=70>>70 pages.\n#### 70"),
    ("A shirt costs 15 dollars and a hat costs 9 dollars. What do both cost together?", "15 + 9 = <<15+9=24>>24 dollars.\n#### 24"),
    ("Mia has 5 bags with 6 marbles in each bag. How many marbles does she have?", "5 * 6 = <<5*6=30>>30 marbles.\n#### 30"),
    ("A baker makes 50 rolls and sells 32. How many rolls are left?", "50 - 32 = <<50-32=18>>18 rolls.\n#### 18"),
]


def license_sentences(n:int) -> list[str]:
    "Sentences of CPython's LICENSE.txt with 12 to 40 words (lambada-style passages: predict the last word)."
    from llmlab.eval import python_license_text
    text = re.sub(r'\s+', ' ', python_license_text())
    out = [s.strip() for s in re.split(r'(?<=[.;])\s', text) if 12 <= len(s.split()) <= 40 and s.strip()[-1] in '.;']
    return [s.rstrip('.;') for s in out[:n]]


def wikitext_pages() -> list[str]:
    """Two pages of CPython's LICENSE.txt (~1,500 tokens: two rolling windows of 1,024; ~650 tokens), tokenised the way WikiText is
    (' @-@ ', ' , ', ' . ') so that lm-eval's detokenizer has work."""
    from llmlab.eval import python_license_text
    text = python_license_text()
    return [' = Python license = \n ' + p.replace('-', ' @-@ ').replace(', ', ' , ').replace('. ', ' . ') + ' \n' for p in (text[:5000], text[-2500:])]


def write_catalogue_data(root:Path, n_lambada:int=10) -> Path:
    "Everything under `root/<dataset_path>/[<dataset_name>/]<split>.jsonl` for mmlu_abstract_algebra, hellaswag, lambada_openai, gsm8k, wikitext."
    rows = mmlu_rows()
    dev = rows['abstract_algebra']
    test = [dict(r, subject='abstract_algebra') for s in ('college_mathematics', 'high_school_mathematics') for r in rows[s]][:8]
    _write(root / 'cais/mmlu/abstract_algebra', 'dev', dev); _write(root / 'cais/mmlu/abstract_algebra', 'test', test)
    hs = [{'ind': i, 'activity_label': a, 'ctx_a': ca, 'ctx_b': cb, 'ctx': f'{ca} {cb}', 'endings': e, 'source_id': f'local~{i}',
           'split': 'val', 'split_type': 'indomain', 'label': str(lab)} for i, (a, ca, cb, e, lab) in enumerate(HELLASWAG)]
    _write(root / 'Rowan/hellaswag', 'validation', hs); _write(root / 'Rowan/hellaswag', 'train', hs[:2])
    _write(root / 'EleutherAI/lambada_openai/default', 'test', [{'text': s} for s in license_sentences(n_lambada)])
    _write(root / 'openai/gsm8k/main', 'train', [{'question': q, 'answer': a} for q, a in GSM8K[:5]])
    _write(root / 'openai/gsm8k/main', 'test', [{'question': q, 'answer': a} for q, a in GSM8K[5:8]])
    pages = [{'page': p} for p in wikitext_pages()]
    for split in ('train', 'validation', 'test'): _write(root / 'EleutherAI/wikitext_document_level/wikitext-2-raw-v1', split, pages)
    return root
