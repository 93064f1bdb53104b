"""The checked bilingual lexicon of the 80 COCO categories.

Why a hand-checked table instead of a translator or an inflection library:
published Chinese versions of LLaVA data translated COCO words out of context
(orange -> the colour 橙色, remote -> 远程, parking meter -> 停车费, couch ->
在沙发上), and POPE's own templates got English articles and plurals wrong
("a apple", "skiss"). Every category name that reaches an instruction, in
either language, goes through this table; ``zh_avoid`` lists the known
mistranslations so tests and the synthesis checker can look for them.

Keys are the real COCO English category names (``instances_*.json``); ids are
the real COCO ids (1-90 with gaps).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    id: int  # real COCO category id (1-90 with gaps)
    en: str  # singular surface form used in sentences ("pair of skis", "TV")
    en_plural: str
    en_article: str  # "a" | "an", decided by sound of ``en``
    zh: str  # context-correct Chinese noun
    zh_measure: str  # classifier used when counting: 两只猫, 三辆车
    zh_avoid: tuple[str, ...]  # known mistranslations that must never stand for this category
    supercategory: str


# --------------------------------------------------------------------- articles by sound

# Words that start with a vowel letter but a consonant sound, and the reverse.
# Matched against the first word of a phrase, lower-cased, by prefix.
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "euro", "eu", "one", "once", "ubiq")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honour", "honor", "heir")
# Initialisms read letter by letter: the article follows the letter's name.
_VOWEL_SOUND_LETTERS = set("aefhilmnorsx")  # "an F", "an M", "an SUV"


def indefinite_article(phrase: str) -> str:
    """"a" or "an" for ``phrase`` by the sound of its first word (table-driven exceptions)."""
    word = phrase.strip().split()[0] if phrase.strip() else ""
    if not word:
        raise ValueError("indefinite_article() needs a non-empty phrase")
    if word.isupper() and len(word) > 1:  # initialism: TV, SUV
        return "an" if word[0].lower() in _VOWEL_SOUND_LETTERS else "a"
    low = word.lower()
    if low.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if low.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if low[0] in "aeiou" else "a"


# ------------------------------------------------------------------------------ the table

# (id, COCO name, en singular, en plural, zh, zh measure, zh_avoid, supercategory)
_ROWS: list[tuple[int, str, str, str, str, str, tuple[str, ...], str]] = [
    (1, "person", "person", "people", "人", "个", ("人物角色",), "person"),
    (2, "bicycle", "bicycle", "bicycles", "自行车", "辆", ("脚踏车辆",), "vehicle"),
    (3, "car", "car", "cars", "汽车", "辆", ("车厢",), "vehicle"),
    (4, "motorcycle", "motorcycle", "motorcycles", "摩托车", "辆", ("机车骑士",), "vehicle"),
    (5, "airplane", "airplane", "airplanes", "飞机", "架", ("飞机场",), "vehicle"),
    (6, "bus", "bus", "buses", "公交车", "辆", ("总线",), "vehicle"),
    (7, "train", "train", "trains", "火车", "列", ("训练", "培训"), "vehicle"),
    (8, "truck", "truck", "trucks", "卡车", "辆", ("交易",), "vehicle"),
    (9, "boat", "boat", "boats", "船", "艘", ("小舟车",), "vehicle"),
    (10, "traffic light", "traffic light", "traffic lights", "交通信号灯", "个", ("交通光", "交通灯光"), "outdoor"),
    (11, "fire hydrant", "fire hydrant", "fire hydrants", "消防栓", "个", ("消防水合物",), "outdoor"),
    (13, "stop sign", "stop sign", "stop signs", "停车标志", "个", ("停止签名", "停止标志位"), "outdoor"),
    (14, "parking meter", "parking meter", "parking meters", "停车计时器", "个", ("停车费", "停车米"), "outdoor"),
    (15, "bench", "bench", "benches", "长椅", "张", ("基准", "工作台"), "outdoor"),
    (16, "bird", "bird", "birds", "鸟", "只", ("伯德",), "animal"),
    (17, "cat", "cat", "cats", "猫", "只", ("卡特",), "animal"),
    (18, "dog", "dog", "dogs", "狗", "只", ("跟踪",), "animal"),
    (19, "horse", "horse", "horses", "马", "匹", ("鞍马",), "animal"),
    (20, "sheep", "sheep", "sheep", "绵羊", "只", ("羊群们",), "animal"),
    (21, "cow", "cow", "cows", "牛", "头", ("恐吓",), "animal"),
    (22, "elephant", "elephant", "elephants", "大象", "头", ("庞然大物",), "animal"),
    (23, "bear", "bear", "bears", "熊", "只", ("承受", "忍受"), "animal"),
    (24, "zebra", "zebra", "zebras", "斑马", "匹", ("人行横道",), "animal"),
    (25, "giraffe", "giraffe", "giraffes", "长颈鹿", "只", ("吉拉夫",), "animal"),
    (27, "backpack", "backpack", "backpacks", "背包", "个", ("背包旅行",), "accessory"),
    (28, "umbrella", "umbrella", "umbrellas", "雨伞", "把", ("保护伞组织",), "accessory"),
    (31, "handbag", "handbag", "handbags", "手提包", "个", ("手袋子们",), "accessory"),
    (32, "tie", "tie", "ties", "领带", "条", ("平局", "打结"), "accessory"),
    (33, "suitcase", "suitcase", "suitcases", "行李箱", "个", ("诉讼案件",), "accessory"),
    (34, "frisbee", "frisbee", "frisbees", "飞盘", "个", ("飞碟",), "sports"),
    (35, "skis", "pair of skis", "pairs of skis", "双板滑雪板", "副", ("滑雪运动",), "sports"),
    (36, "snowboard", "snowboard", "snowboards", "单板滑雪板", "块", ("雪板运动",), "sports"),
    (37, "sports ball", "sports ball", "sports balls", "球", "个", ("体育舞会", "运动舞会"), "sports"),
    (38, "kite", "kite", "kites", "风筝", "只", ("鸢",), "sports"),
    (39, "baseball bat", "baseball bat", "baseball bats", "棒球棒", "根", ("棒球蝙蝠", "蝙蝠"), "sports"),
    (40, "baseball glove", "baseball glove", "baseball gloves", "棒球手套", "只", ("棒球爱好者",), "sports"),
    (41, "skateboard", "skateboard", "skateboards", "滑板", "块", ("滑板运动",), "sports"),
    (42, "surfboard", "surfboard", "surfboards", "冲浪板", "块", ("冲浪运动",), "sports"),
    (43, "tennis racket", "tennis racket", "tennis rackets", "网球拍", "把", ("网球噪音", "敲诈"), "sports"),
    (44, "bottle", "bottle", "bottles", "瓶子", "个", ("瓶颈",), "kitchen"),
    (46, "wine glass", "wine glass", "wine glasses", "高脚杯", "个", ("葡萄酒玻璃", "酒玻璃"), "kitchen"),
    (47, "cup", "cup", "cups", "杯子", "个", ("奖杯", "世界杯"), "kitchen"),
    (48, "fork", "fork", "forks", "叉子", "把", ("分叉", "分支"), "kitchen"),
    (49, "knife", "knife", "knives", "刀子", "把", ("刀法",), "kitchen"),
    (50, "spoon", "spoon", "spoons", "勺子", "把", ("汤匙舀",), "kitchen"),
    (51, "bowl", "bowl", "bowls", "碗", "个", ("保龄球", "超级碗"), "kitchen"),
    (52, "banana", "banana", "bananas", "香蕉", "根", ("香蕉共和国",), "food"),
    (53, "apple", "apple", "apples", "苹果", "个", ("苹果公司",), "food"),
    (54, "sandwich", "sandwich", "sandwiches", "三明治", "个", ("夹在中间",), "food"),
    (55, "orange", "orange", "oranges", "橙子", "个", ("橙色", "橘色", "橘黄色"), "food"),
    (56, "broccoli", "piece of broccoli", "pieces of broccoli", "西兰花", "块", ("花椰菜属",), "food"),
    (57, "carrot", "carrot", "carrots", "胡萝卜", "根", ("克拉",), "food"),
    (58, "hot dog", "hot dog", "hot dogs", "热狗", "个", ("热的狗", "很热的狗"), "food"),
    (59, "pizza", "pizza", "pizzas", "披萨", "个", ("比萨斜塔",), "food"),
    (60, "donut", "donut", "donuts", "甜甜圈", "个", ("环形面",), "food"),
    (61, "cake", "cake", "cakes", "蛋糕", "个", ("结块",), "food"),
    (62, "chair", "chair", "chairs", "椅子", "把", ("主席", "主持"), "furniture"),
    (63, "couch", "couch", "couches", "沙发", "张", ("在沙发上", "措辞"), "furniture"),
    (64, "potted plant", "potted plant", "potted plants", "盆栽", "盆", ("工厂", "植物厂"), "furniture"),
    (65, "bed", "bed", "beds", "床", "张", ("床位费",), "furniture"),
    (67, "dining table", "dining table", "dining tables", "餐桌", "张", ("餐饮表", "用餐表格"), "furniture"),
    (70, "toilet", "toilet", "toilets", "马桶", "个", ("厕所文学",), "furniture"),
    (72, "tv", "TV", "TVs", "电视机", "台", ("电视台", "电视节目"), "electronic"),
    (73, "laptop", "laptop", "laptops", "笔记本电脑", "台", ("膝上",), "electronic"),
    (74, "mouse", "mouse", "mice", "鼠标", "个", ("老鼠", "小鼠"), "electronic"),
    (75, "remote", "remote", "remotes", "遥控器", "个", ("远程", "遥远"), "electronic"),
    (76, "keyboard", "keyboard", "keyboards", "键盘", "个", ("键盘乐器", "电子琴"), "electronic"),
    (77, "cell phone", "cell phone", "cell phones", "手机", "部", ("细胞电话", "细胞"), "electronic"),
    (78, "microwave", "microwave", "microwaves", "微波炉", "台", ("微波辐射",), "appliance"),
    (79, "oven", "oven", "ovens", "烤箱", "台", ("烤炉窑",), "appliance"),
    (80, "toaster", "toaster", "toasters", "烤面包机", "台", ("敬酒者", "祝酒人"), "appliance"),
    (81, "sink", "sink", "sinks", "水槽", "个", ("下沉", "沉没"), "appliance"),
    (82, "refrigerator", "refrigerator", "refrigerators", "冰箱", "台", ("制冷剂",), "appliance"),
    (84, "book", "book", "books", "书", "本", ("预订", "预约"), "indoor"),
    (85, "clock", "clock", "clocks", "时钟", "个", ("打卡", "计时赛"), "indoor"),
    (86, "vase", "vase", "vases", "花瓶", "个", ("瓦斯",), "indoor"),
    (87, "scissors", "pair of scissors", "pairs of scissors", "剪刀", "把", ("剪刀手",), "indoor"),
    (88, "teddy bear", "teddy bear", "teddy bears", "泰迪熊", "只", ("泰迪承受",), "indoor"),
    # COCO names the category "hair drier"; sentences say "hair dryer"
    (89, "hair drier", "hair dryer", "hair dryers", "吹风机", "个", ("干燥剂", "头发干燥剂"), "indoor"),
    (90, "toothbrush", "toothbrush", "toothbrushes", "牙刷", "把", ("牙刷子们",), "indoor"),
]

LEXICON: dict[str, Term] = {
    name: Term(id=i, en=en, en_plural=pl, en_article=indefinite_article(en), zh=zh, zh_measure=m, zh_avoid=avoid, supercategory=sc)
    for i, name, en, pl, zh, m, avoid, sc in _ROWS
}
BY_ID: dict[int, str] = {t.id: name for name, t in LEXICON.items()}


def term(label: str) -> Term:
    """The lexicon entry for a COCO category name; a clear KeyError for anything else."""
    try:
        return LEXICON[label]
    except KeyError:
        raise KeyError(
            f"unknown object label {label!r}: expected one of the 80 COCO category names "
            f"(e.g. 'person', 'sports ball', 'tv'); map other vocabularies to COCO names first"
        ) from None


# ------------------------------------------------------------------------------ numbers

_EN_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
EN_NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(_EN_NUMBERS)}

_ZH_DIGITS = "零一二三四五六七八九"


def en_number(n: int) -> str:
    """Number word for 0-20, digits above (style guides spell out small counts)."""
    if n < 0:
        raise ValueError(f"negative count {n}")
    return _EN_NUMBERS[n] if n < len(_EN_NUMBERS) else str(n)


def zh_number(n: int, before_measure: bool = True) -> str:
    """Chinese numeral for 0-99 (digits above); 两 instead of 二 before a classifier.

    Only a bare 2 becomes 两 (两只), never the 2 in 十二 or 二十 (十二只, 二十只)."""
    if n < 0:
        raise ValueError(f"negative count {n}")
    if n == 2 and before_measure:
        return "两"
    if n < 10:
        return _ZH_DIGITS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return ("" if tens == 1 else _ZH_DIGITS[tens]) + "十" + (_ZH_DIGITS[ones] if ones else "")
    return str(n)


def parse_zh_number(text: str) -> int:
    """Inverse of :func:`zh_number` (used by the independent checker)."""
    if text.isdigit():
        return int(text)
    if text == "两":
        return 2
    if "十" in text:
        tens, _, ones = text.partition("十")
        return (_ZH_DIGITS.index(tens) if tens else 1) * 10 + (_ZH_DIGITS.index(ones) if ones else 0)
    if len(text) == 1 and text in _ZH_DIGITS:
        return _ZH_DIGITS.index(text)
    raise ValueError(f"not a Chinese numeral: {text!r}")


# ------------------------------------------------------------------------------ phrases

def en_noun(label: str, n: int) -> str:
    """Singular for 1, plural otherwise (including 0: "no zebras")."""
    t = term(label)
    return t.en if n == 1 else t.en_plural


def en_count_phrase(label: str, n: int) -> str:
    """"one zebra", "two zebras", "three sheep", "no zebras"."""
    if n == 0:
        return f"no {term(label).en_plural}"
    return f"{en_number(n)} {en_noun(label, n)}"


def en_with_article(label: str) -> str:
    """"an orange", "a sports ball", "a TV", "an umbrella"."""
    t = term(label)
    return f"{t.en_article} {t.en}"


def animate(label: str) -> bool:
    """People and animals: the only categories one can ask what they are doing or why."""
    return term(label).supercategory in ("person", "animal")


def zh_count_phrase(label: str, n: int) -> str:
    """"两匹斑马", "一辆汽车"; 0 gives "没有斑马"."""
    t = term(label)
    if n == 0:
        return f"没有{t.zh}"
    return f"{zh_number(n)}{t.zh_measure}{t.zh}"
