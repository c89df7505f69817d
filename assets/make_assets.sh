#!/usr/bin/env bash
# Remakes the simulator's speech assets (development time only; tests and CI use the committed WAVs).
# Needs espeak-ng and sox (apt-get install espeak-ng sox). Output: 8 kHz mono 16-bit PCM WAV,
# the telephone band, with 150 ms of leading silence trimmed to 50 ms at both ends so onsets are crisp.
set -euo pipefail
cd "$(dirname "$0")"
say() {  # say VOICE FILE TEXT
  espeak-ng -v "$1" -s 165 -w /tmp/espeak_$$.wav "$3"
  sox /tmp/espeak_$$.wav -r 8000 -c 1 -b 16 "$2" silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse pad 0.05 0.05 norm -3
  rm -f /tmp/espeak_$$.wav
}
caller=en-us+m3
assistant=en-us+f3
say "$caller" caller_question.wav "Hi. Can you tell me something interesting about the history of Paris?"
say "$caller" caller_interrupt.wav "Sorry, wait. Can you make that shorter?"
say "$caller" caller_search.wav "What's the weather like in Paris today?"
say "$caller" caller_goodbye.wav "That's all, thanks. Goodbye!"
say "$assistant" assistant_greeting.wav "Hi Jordan, it's your assistant. How can I help you today?"
say "$assistant" assistant_long.wav "Paris has a long and fascinating history. It began as a small settlement of a Celtic tribe called the Parisii on an island in the river Seine, more than two thousand years ago. The Romans later built a town there called Lutetia, with baths, a forum and an arena that you can still visit today."
say "$assistant" assistant_short.wav "Of course. In short: Paris started as a Celtic village on the Seine, and grew into a great capital."
say "$assistant" assistant_one_moment.wav "One moment, let me look that up."
say "$assistant" assistant_weather.wav "It's sunny in Paris today, around eighteen degrees, according to a weather service."
say "$assistant" assistant_goodbye.wav "You're welcome, Jordan. Goodbye!"
sox -n -r 8000 -c 1 -b 16 wait_music.wav synth 4 pluck C4 pluck E4 pluck G4 fade 0 4 0.5 norm -6 2>/dev/null \
  || sox -n -r 8000 -c 1 -b 16 wait_music.wav synth 4 sine 440 norm -6
# The apology a caller hears when the assistant cannot be reached (bridge.APOLOGY_FILE): raw 8 kHz µ-law,
# played as it is, so it needs no conversion at call time.
espeak-ng -v en-us+f3 -s 175 -w /tmp/espeak_$$.wav "Sorry, the assistant cannot be reached right now. Please call again in a few minutes."
sox /tmp/espeak_$$.wav -r 8000 -c 1 -e mu-law -t raw apology.ulaw silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse pad 0.1 0.2 norm -3
rm -f /tmp/espeak_$$.wav
# Real recorded speech for scenarios/real_speech.json: CMU Arctic utterance arctic_a0007 ("Author of the
# danger trail, Philip Steels, etc."), shipped with the pysptk package (licence: CMU_ARCTIC_COPYING).
pip download --no-deps --no-binary :all: -q -d /tmp/pysptk_$$ pysptk==1.0.1
tar xzf /tmp/pysptk_$$/pysptk-1.0.1.tar.gz -C /tmp/pysptk_$$
arctic=/tmp/pysptk_$$/pysptk-1.0.1/pysptk/example_audio_data
{ printf '%s\n' "caller_real_full.wav, caller_real_title.wav and caller_real_name.wav are CMU Arctic utterance arctic_a0007," \
    "as shipped in the pysptk 1.0.1 package (pysptk/example_audio_data), MODIFIED: resampled from 16 kHz to 8 kHz," \
    "trimmed (whole utterance, first and second half) and normalised to -3 dBFS with sox (assets/make_assets.sh)." \
    "The original notice follows, unchanged." ""; cat "$arctic/COPYING"; } > CMU_ARCTIC_COPYING
sox "$arctic/arctic_a0007.wav" -r 8000 -c 1 -b 16 caller_real_full.wav trim 0.33 3.17 norm -3
sox "$arctic/arctic_a0007.wav" -r 8000 -c 1 -b 16 caller_real_title.wav trim 0.33 1.52 norm -3
sox "$arctic/arctic_a0007.wav" -r 8000 -c 1 -b 16 caller_real_name.wav trim 1.90 1.60 norm -3
rm -rf /tmp/pysptk_$$
say "$assistant" assistant_book.wav "That sounds like a line from a library catalogue: a book called The Danger Trail, and a name, Philip Steels. Old adventure novels like that were very popular about a century ago, and many of them can now be read for free online."
say "$assistant" assistant_book_short.wav "Philip Steels. Got it, I'll remember the name."
say "$assistant" assistant_book_bye.wav "Happy reading, Jordan. Goodbye!"
# Outbound calls (scenarios/outbound_human.json, outbound_machine.json) and a transfer (transfer.json).
say "$caller" callee_hello.wav "Hello?"
say "$caller" callee_thanks.wav "Oh right, thanks for the reminder. Bye!"
say "$assistant" assistant_reminder.wav "Hi Jordan, it's your assistant. I'm calling to remind you about your dentist appointment at three p m today."
say "$assistant" assistant_bye.wav "You're welcome. Goodbye!"
say "$assistant" assistant_voicemail.wav "Hi Jordan, it's your assistant, calling to remind you about your dentist appointment at three p m today. Goodbye!"
# The answering machine: its greeting, then a 1 kHz beep.
say en-us+m1 /tmp/greeting_$$.wav "Hi, you've reached Jordan. Please leave a message after the tone."
sox -n -r 8000 -c 1 -b 16 /tmp/beep_$$.wav synth 0.5 sine 1000 vol 0.5
sox /tmp/greeting_$$.wav /tmp/beep_$$.wav machine_greeting.wav pad 0 0
rm -f /tmp/greeting_$$.wav /tmp/beep_$$.wav
say "$caller" caller_person.wav "Can I speak to a person, please?"
say "$assistant" assistant_transfer.wav "Of course. I'll put you through to a colleague now."
say "$assistant" assistant_not_connected.wav "Sorry, I couldn't connect you. How else can I help?"
