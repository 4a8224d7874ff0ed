"""A fictional encyclopedia: the corpus realm_jax generates itself.

People, places and organisations with invented names, and facts that link
them (birth dates, birthplaces, founding years, founders, leaders). Every
fact is stated in the article of the entity it is about AND mentioned in the
articles of the entities it links, so retrieving the right article helps to
predict a masked name or date, which is what REALM's salient span masking
asks. Birthplaces are drawn from a skewed distribution, so a few towns have
articles long enough to span several 288-token blocks.
"""
from collections.abc import Iterator
import random

_SYLLABLES = ('ka', 'lo', 'mi', 'ren', 'dor', 'ta', 'vel', 'sa', 'nor', 'bri',
              'el', 'gan', 'tho', 'ria', 'quin', 'mar', 'zu', 'bel', 'fen',
              'os', 'ul', 'ard', 'is', 'wyn', 'cas', 'pe', 'dri', 'om')
_MONTHS = ('January', 'February', 'March', 'April', 'May', 'June', 'July',
           'August', 'September', 'October', 'November', 'December')
_PROFESSIONS = ('painter', 'physicist', 'merchant', 'composer', 'architect',
                'explorer', 'poet', 'engineer', 'botanist', 'cartographer')
_ORG_KINDS = ('University', 'Trading Company', 'Society', 'Orchestra',
              'Observatory', 'Bank', 'Museum', 'Railway', 'Library')
_REGIONS = ('the northern highlands', 'the river delta', 'the eastern marches',
            'the southern plains', 'the lake district', 'the western hills')
_SURROUNDINGS = ('orchards', 'salt marshes', 'pine forests', 'vineyards',
                 'limestone quarries', 'fishing harbours', 'wheat fields')


def _word(rng: random.Random, syllables: int) -> str:
  return ''.join(rng.choice(_SYLLABLES) for _ in range(syllables)).title()


def _name(rng: random.Random, used: set[str], make) -> str:
  """A name `make(rng)` that no other entity has."""
  while (name := make(rng)) in used:
    pass
  used.add(name)
  return name


def _date(rng: random.Random, year: int) -> str:
  return f'{rng.randint(1, 28)} {rng.choice(_MONTHS)} {year}'


def _entities(num_docs: int, rng: random.Random):
  """Places, people and organisations with the facts that link them."""
  used = set()
  num_places = max(1, num_docs // 5)
  num_orgs = max(1, num_docs * 3 // 10)
  places = [dict(title=_name(rng, used, lambda r: _word(r, 3)),
                 region=rng.choice(_REGIONS),
                 founded=rng.randint(900, 1600),
                 population=rng.randint(2, 900) * 100,
                 surroundings=rng.choice(_SURROUNDINGS), people=[], orgs=[])
            for _ in range(num_places)]
  # Zipf-like: a few towns are the birthplace of many people.
  weights = [1 / (rank + 1) for rank in range(num_places)]
  people = []
  for _ in range(num_docs - num_places - num_orgs):
    year = rng.randint(1700, 1900)
    person = dict(
        title=_name(rng, used, lambda r: f'{_word(r, 2)} {_word(r, 3)}'),
        born=_date(rng, year), year=year, died=year + rng.randint(35, 90),
        profession=rng.choice(_PROFESSIONS),
        place=rng.choices(places, weights)[0], founded=[], led=[])
    person['place']['people'].append(person)
    people.append(person)
  orgs = []
  for _ in range(num_orgs):
    founder, leader = rng.choice(people), rng.choice(people)
    founded = founder['year'] + rng.randint(25, 34)  # before death at 35+
    org = dict(
        title=_name(rng, used,
                    lambda r: f'{_word(r, 3)} {r.choice(_ORG_KINDS)}'),
        founded=founded, founder=founder, leader=leader,
        led_from=max(founded, leader['year'] + rng.randint(25, 34)),
        place=rng.choice(places))
    founder['founded'].append(org)
    leader['led'].append(org)
    org['place']['orgs'].append(org)
    orgs.append(org)
  return places, people, orgs


def _person_article(p) -> str:
  surname = p['title'].split()[-1]
  sentences = [
      f"{p['title']} ({p['year']}-{p['died']}) was a {p['profession']} from "
      f"{p['place']['title']}.",
      f"{surname} was born on {p['born']} in {p['place']['title']}, a town "
      f"in {p['place']['region']}."]
  for org in p['founded']:
    sentences.append(f"In {org['founded']}, {surname} founded the "
                     f"{org['title']} in {org['place']['title']}.")
  for org in p['led']:
    sentences.append(f"From {org['led_from']}, {p['title']} led the "
                     f"{org['title']}, which {org['founder']['title']} had "
                     f"founded in {org['founded']}.")
  sentences.append(f"{surname} died in {p['died']}.")
  return ' '.join(sentences)


def _place_article(place) -> str:
  sentences = [
      f"{place['title']} is a town in {place['region']}, known for its "
      f"{place['surroundings']}.",
      f"It was founded in {place['founded']} and has about "
      f"{place['population']:,} inhabitants."]
  for p in place['people']:
    sentences.append(f"The {p['profession']} {p['title']} was born in "
                     f"{place['title']} on {p['born']}.")
  for org in place['orgs']:
    sentences.append(f"The {org['title']}, founded by "
                     f"{org['founder']['title']} in {org['founded']}, has its "
                     f"headquarters in {place['title']}.")
  return ' '.join(sentences)


def _org_article(org) -> str:
  founder, leader = org['founder'], org['leader']
  return ' '.join([
      f"The {org['title']} was founded in {org['founded']} by the "
      f"{founder['profession']} {founder['title']}.",
      f"Its headquarters are in {org['place']['title']}, in "
      f"{org['place']['region']}.",
      f"{founder['title']} was born in {founder['place']['title']} on "
      f"{founder['born']}.",
      f"From {org['led_from']} it was led by {leader['title']}, who was born "
      f"on {leader['born']} in {leader['place']['title']}."])


def generate_documents(num_docs: int,
                       seed: int = 0) -> Iterator[dict[str, str]]:
  """Yields `num_docs` articles {'doc_id', 'title', 'text'}, deterministic."""
  if num_docs < 3:
    raise ValueError(f'num_docs={num_docs}: need at least 3 (a person, a '
                     'place and an organisation)')
  rng = random.Random(seed)
  places, people, orgs = _entities(num_docs, rng)
  articles = ([(p['title'], _place_article(p)) for p in places]
              + [(p['title'], _person_article(p)) for p in people]
              + [(o['title'], _org_article(o)) for o in orgs])
  rng.shuffle(articles)
  for index, (title, text) in enumerate(articles):
    yield {'doc_id': f'synthetic-{seed}-{index}', 'title': title, 'text': text}
